//! Read-only helpers over a request's header list, as Envoy hands it over (one pair per line).
//!
//! Names are compared case-insensitively; values are never modified here.

/// A header list: every line, in order, duplicates kept (the Kubernetes rules scan every line).
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a>(pub &'a [(String, String)]);

impl<'a> Headers<'a> {
    /// Every value of `name`, in order.
    pub fn all(&self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, like Go's `Header.Get`.
    pub fn first(&self, name: &'a str) -> Option<&'a str> {
        self.all(name).next()
    }

    /// Whether at least one line named `name` exists (even with an empty value).
    pub fn has(&self, name: &'a str) -> bool {
        self.first(name).is_some()
    }
}

/// Builds an owned header list from pairs (tests of every module use it).
#[cfg(test)]
pub(crate) fn list(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_case_insensitive_and_keep_every_line() {
        let list = vec![
            ("Connection".to_string(), "keep-alive".to_string()),
            ("connection".to_string(), "Upgrade".to_string()),
        ];
        let h = Headers(&list);
        assert_eq!(
            h.all("connection").collect::<Vec<_>>(),
            ["keep-alive", "Upgrade"]
        );
        assert_eq!(h.first("CONNECTION"), Some("keep-alive"));
        assert!(!h.has("upgrade"));
    }
}
