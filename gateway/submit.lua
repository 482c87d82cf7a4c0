-- The submit route's script (POST /api/v1/jobs), which runs before the gRPC-JSON transcoder.
--
-- On the way in: the transcoder silently drops JSON fields the contract does not have, so a
-- misspelt or unsupported top-level field would be ignored. This answers 400 naming the first
-- top-level key that is not a field of SubmitJobRequest.
-- On the way back: the transcoder answers every success with 200; the REST API promised 201 for a
-- submit. Errors keep their status.

-- SubmitJobRequest's fields, by proto name and by proto3 JSON name.
local allowed = {
  ["data"] = true,
  ["operation"] = true,
  ["request_id"] = true,
  ["requestId"] = true,
}

-- The first top-level key of a JSON object that is not allowed, or nil.
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
        if not allowed[key] then return key end
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
    local shown = key:sub(1, 40):gsub("[^%w_%-%.]", "?")
    request_handle:respond(
      {[":status"] = "400", ["content-type"] = "application/json"},
      '{"code":3,"message":"unknown field \"' .. shown ..
        '\" in the request body; known fields: data, operation, request_id"}')
  end
end

function envoy_on_response(response_handle)
  if response_handle:headers():get(":status") == "200" then
    response_handle:headers():replace(":status", "201")
  end
end
