-- wrk script: PUT a value to one of 1000 keys of bucket `data` through the
-- control API, round robin (each wrk thread keeps its own counter).
local n = 0
request = function()
  n = n + 1
  return wrk.format("PUT", "/v1/kv/data/keys/k" .. (n % 1000), nil, "value " .. n)
end
