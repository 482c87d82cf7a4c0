-- The submit route's script (POST /api/v1/jobs), which runs before the gRPC-JSON transcoder.
--
-- On the way in: the transcoder silently drops JSON fields the contract does not have, so a
-- misspelt or unsupported top-level field would be ignored. This answers 400 naming the first
-- top-level key that is not a field of SubmitJobRequest. Keys are compared by their JSON value,
-- as the transcoder reads them: "d\u0061ta" is "data". A key with an invalid escape is never a
-- field, so it is refused too.
-- On the way back: the transcoder answers every success with 200; the REST API promised 201 for a
-- submit. Errors keep their status.

-- SubmitJobRequest's fields, by proto name and by proto3 JSON name.
local allowed = {
  ["data"] = true,
  ["operation"] = true,
  ["request_id"] = true,
  ["requestId"] = true,
}

-- What a one-character escape (after the backslash) stands for.
local escapes = {
  [34] = '"', [92] = "\\", [47] = "/",
  [98] = "\b", [102] = "\f", [110] = "\n", [114] = "\r", [116] = "\t",
}

-- The UTF-8 bytes of a code point.
local function utf8_char(code)
  if code < 0x80 then
    return string.char(code)
  elseif code < 0x800 then
    return string.char(0xC0 + math.floor(code / 0x40), 0x80 + code % 0x40)
  elseif code < 0x10000 then
    return string.char(0xE0 + math.floor(code / 0x1000),
      0x80 + math.floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
  end
  return string.char(0xF0 + math.floor(code / 0x40000), 0x80 + math.floor(code / 0x1000) % 0x40,
    0x80 + math.floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
end

-- The value of a JSON string given its text between the quotes, or nil if an escape is invalid
-- (an unknown escape, too few hex digits, a UTF-16 surrogate without its pair).
local function json_string_value(text)
  if not text:find("\\", 1, true) then return text end
  local parts, i = {}, 1
  while true do
    local slash = text:find("\\", i, true)
    if slash == nil then
      parts[#parts + 1] = text:sub(i)
      return table.concat(parts)
    end
    parts[#parts + 1] = text:sub(i, slash - 1)
    local kind = text:byte(slash + 1)
    if kind == 117 then -- \uXXXX
      local hex = text:match("^%x%x%x%x", slash + 2)
      if hex == nil then return nil end
      local code = tonumber(hex, 16)
      i = slash + 6
      if code >= 0xD800 and code <= 0xDBFF then -- a high surrogate: its low half must follow
        local low = text:match("^\\u([dD][c-fC-F]%x%x)", i)
        if low == nil then return nil end
        code = 0x10000 + (code - 0xD800) * 0x400 + (tonumber(low, 16) - 0xDC00)
        i = i + 6
      elseif code >= 0xDC00 and code <= 0xDFFF then
        return nil
      end
      parts[#parts + 1] = utf8_char(code)
    else
      local char = escapes[kind]
      if char == nil then return nil end
      parts[#parts + 1] = char
      i = slash + 2
    end
  end
end

-- The first top-level key of a JSON object that is not allowed, or nil: its value, or its text
-- when an escape in it is invalid. Anything that is not an object is left to the transcoder.
local function unknown_key(text)
  local depth, i, n = 0, 1, #text
  local top_is_object, expect_key = false, false
  while i <= n do
    local c = text:byte(i)
    if c == 34 then -- a string: skip it, honouring escapes
      local j = i + 1
      while j <= n do
        local d = text:byte(j)
        if d == 92 then j = j + 2 elseif d == 34 then break else j = j + 1 end
      end
      if depth == 1 and top_is_object and expect_key then
        local key = text:sub(i + 1, j - 1)
        local value = json_string_value(key)
        if value == nil then return key end
        if not allowed[value] then return value end
        expect_key = false
      end
      i = j + 1
    else
      if c == 123 or c == 91 then -- { or [
        depth = depth + 1
        if depth == 1 then top_is_object = (c == 123); expect_key = top_is_object end
      elseif c == 125 or c == 93 then -- } or ]
        depth = depth - 1
      elseif c == 44 and depth == 1 then -- ,
        expect_key = top_is_object
      end
      i = i + 1
    end
  end
  return nil
end

function envoy_on_request(request_handle)
  local body = request_handle:body()
  if body == nil or body:length() == 0 then return end
  local key = unknown_key(body:getBytes(0, body:length()))
  if key ~= nil then
    -- Envoy's local reply mapper (envoy.yaml) turns this text into the JSON error body. Only
    -- letters, digits and `_-.` of the key are echoed, each other byte as `?`.
    local shown = key:sub(1, 40):gsub("[^%w_%-%.]", "?")
    request_handle:respond(
      {[":status"] = "400", ["content-type"] = "text/plain"},
      'unknown field "' .. shown .. '" in the request body; known fields: data, operation, request_id')
  end
end

function envoy_on_response(response_handle)
  if response_handle:headers():get(":status") == "200" then
    response_handle:headers():replace(":status", "201")
  end
end
