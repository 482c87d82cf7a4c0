-- The submit routes' script (POST /api/v1/jobs and POST /api/v1/jobs:batchSubmit), which runs
-- before the gRPC-JSON transcoder. The route's metadata names the message its body holds
-- (`request_message` under envoy.filters.http.lua).
--
-- On the way in: the transcoder silently drops JSON fields the contract does not have, so a
-- misspelt or unsupported field would be ignored. This answers 400 naming the first key that
-- is not a field of the message: at the top level, and in each request of a batch
-- (`requests[3].priority`). Keys are compared by their JSON value, as the transcoder reads them:
-- "d\u0061ta" is "data". A key with an invalid escape is never a field, so it is refused too.
-- Arrays of numbers are skipped in one search each, so a large body costs little.
-- On the way back: the transcoder answers every success with 200; the REST API promised 201 for a
-- submit, and a batch submit creates jobs the same way. Errors keep their status.

-- The fields of each message, by proto name and by proto3 JSON name (`known` lists them for the
-- error message); `items` gives, for a field holding messages, the fields of those.
local submit_job_request = {
  fields = {
    ["data"] = true,
    ["operation"] = true,
    ["request_id"] = true,
    ["requestId"] = true,
  },
  known = "data, operation, request_id",
}
local messages = {
  SubmitJobRequest = submit_job_request,
  BatchSubmitJobsRequest = {
    fields = {["requests"] = true},
    known = "requests",
    items = {["requests"] = submit_job_request},
  },
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

-- What the search stops at: in an object or an array of checked messages, every character that
-- matters; in any other array (numbers), only a string or a bracket, so commas and numbers are
-- skipped in one search.
local EVERY = '["{}%[%],]'
local BRACKETS = '["{}%[%]]'

-- The first key of the JSON text that the message does not have, or nil: the key's path
-- (`requests[3].priority`) with its value, or with its text when an escape in it is invalid; and
-- the message it is not a field of. Anything that is not JSON is left to the transcoder.
local function unknown_key(text, message)
  -- One frame per open object or array: whether it is an object, the message an object is
  -- checked against (nil: not checked), the message of the values of its current key (for an
  -- array: of its items), and its path in the body.
  local stack, depth, i = {}, 0, 1
  while true do
    local frame = stack[depth]
    local stops = (frame == nil or frame.object or frame.items ~= nil) and EVERY or BRACKETS
    i = text:find(stops, i)
    if i == nil then return nil end
    local c = text:byte(i)
    if c == 34 then -- a string: find its end, honouring escapes
      local j = i + 1
      while true do
        j = text:find('["\\]', j)
        if j == nil then return nil end
        if text:byte(j) == 92 then j = j + 2 else break end
      end
      if frame ~= nil and frame.object and frame.expect_key then
        frame.expect_key = false
        local key = text:sub(i + 1, j - 1)
        local value = json_string_value(key)
        if frame.message ~= nil then
          if value == nil or not frame.message.fields[value] then
            return frame.path, value or key, frame.message
          end
          frame.key = value
          frame.items = frame.message.items and frame.message.items[value]
        end
      end
      i = j + 1
    elseif c == 123 or c == 91 then -- { or [
      local checked, path = nil, ""
      if frame == nil then
        checked = c == 123 and message or nil
      elseif frame.object then
        checked, path = frame.items, frame.path .. (frame.key or "")
      else
        checked, path = frame.items, frame.path .. "[" .. frame.index .. "]"
      end
      depth = depth + 1
      if c == 123 then
        stack[depth] = {object = true, message = checked, expect_key = true,
                        path = path == "" and "" or path .. "."}
      else
        stack[depth] = {object = false, items = checked, index = 0, path = path}
      end
      i = i + 1
    elseif c == 125 or c == 93 then -- } or ]
      stack[depth] = nil
      depth = depth - 1
      i = i + 1
    else -- ,
      if frame ~= nil then
        if frame.object then
          frame.expect_key, frame.key, frame.items = true, nil, nil
        else
          frame.index = frame.index + 1
        end
      end
      i = i + 1
    end
  end
end

function envoy_on_request(request_handle)
  local message = messages[request_handle:metadata():get("request_message")]
  local body = request_handle:body()
  if message == nil or body == nil or body:length() == 0 then return end
  local path, key, parent = unknown_key(body:getBytes(0, body:length()), message)
  if path ~= nil then
    -- Envoy's local reply mapper (envoy.yaml) turns this text into the JSON error body. Only
    -- letters, digits and `_-.` of the key are echoed, each other byte as `?`.
    local shown = key:sub(1, 40):gsub("[^%w_%-%.]", "?")
    request_handle:respond(
      {[":status"] = "400", ["content-type"] = "text/plain"},
      'unknown field "' .. path .. shown .. '" in the request body; known fields: '
        .. parent.known)
  end
end

function envoy_on_response(response_handle)
  if response_handle:headers():get(":status") == "200" then
    response_handle:headers():replace(":status", "201")
  end
end
