-- wrk -s batch.lua: POST /purchases/batch with 1000 purchases, customers drawn from 5000 emails
-- (so a batch both creates and updates customers, and names some customer twice).
-- Set API_KEY in the environment to send it as X-API-Key.
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("API_KEY")
if key and key ~= "" then wrk.headers["X-API-Key"] = key end
local size = tonumber(os.getenv("BATCH_SIZE") or "1000")
request = function()
  local entries = {}
  for i = 1, size do
    local n = math.random(1, 5000)
    entries[i] = string.format(
      '{"customer":{"email":"cust%d@example.com","name":"Customer %d"},"item":"item%d","quantity":%d,"unit_price":"12.50"}',
      n, n, math.random(1, 50), math.random(1, 5))
  end
  return wrk.format(nil, "/purchases/batch", nil, '{"purchases":[' .. table.concat(entries, ",") .. ']}')
end
