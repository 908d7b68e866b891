-- The benchmark's Lua equivalent of wsgate's token rewrite, for comparing cost in Envoy only:
-- take the Kubernetes bearer-token subprotocol entry, decode it (base64url, no padding) into
-- Authorization, and keep the other entries. It does less than the wsgate filter (no
-- apiserver-exact validation, no control-character refusal, no routing); do not deploy it.
local PREFIX = "base64url.bearer.authorization.k8s.io."
local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local VALUE = {}
for i = 1, #ALPHABET do
  VALUE[ALPHABET:byte(i)] = i - 1
end

local function decode(s)
  local out, bits, nbits = {}, 0, 0
  for i = 1, #s do
    local v = VALUE[s:byte(i)]
    if v == nil then
      return nil
    end
    bits = bits * 64 + v
    nbits = nbits + 6
    if nbits >= 8 then
      nbits = nbits - 8
      local byte = math.floor(bits / 2 ^ nbits)
      out[#out + 1] = string.char(byte)
      bits = bits - byte * 2 ^ nbits
    end
  end
  return table.concat(out)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local protocols = headers:get("sec-websocket-protocol")
  if protocols == nil then
    return
  end
  local keep, token = {}, nil
  for entry in string.gmatch(protocols, "[^,]+") do
    entry = entry:match("^%s*(.-)%s*$")
    if entry:sub(1, #PREFIX) == PREFIX then
      token = decode(entry:sub(#PREFIX + 1))
    elseif entry ~= "" then
      keep[#keep + 1] = entry
    end
  end
  if token == nil then
    return
  end
  headers:replace("authorization", "Bearer " .. token)
  if #keep > 0 then
    headers:replace("sec-websocket-protocol", table.concat(keep, ", "))
  else
    headers:remove("sec-websocket-protocol")
  end
end
