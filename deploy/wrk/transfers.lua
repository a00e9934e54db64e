-- SPDX-License-Identifier: MIT
--
-- POST /{before,after}/transfers (API.md, pattern 4: cancellation-aware writes). Two different
-- random accounts, a small amount so that balances (1000 each) outlast long runs, and a fresh
-- Idempotency-Key on every request, so each one moves money exactly once and none is a replay.
--
--   wrk ... -s deploy/wrk/transfers.lua URL -- variant=after max_amount=5 delay_ms=0

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local o

function init(args)
    o = common.options(args, { variant = "after", max_amount = 5, delay_ms = 0, max_id = 10000 })
    common.seed()
end

function request()
    local from = common.user_id(o.max_id)
    local to = common.user_id(o.max_id - 1)
    if to >= from then
        to = to + 1 -- uniform over the other accounts, never `from` itself
    end
    local body = string.format('{"from":%d,"to":%d,"amount":%d,"delay_ms":%d}', from, to,
                               math.random(1, o.max_amount), o.delay_ms)
    local headers = {
        ["Content-Type"] = "application/json",
        ["Idempotency-Key"] = common.unique_key("wrk-transfer"),
    }
    return wrk.format("POST", "/" .. o.variant .. "/transfers", headers, body)
end
