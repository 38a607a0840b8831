//! Lua fragments the scripts share. Each script lives beside the one method that calls it
//! (`sessions.rs`, `tasks.rs`, …), under a doc of its `KEYS` and `ARGV` in the order the call
//! gives them, so the positions are matched without scrolling. Scripts may read the server's
//! clock: Redis >= 6.2 replicates their effects, not the script.

/// Lua: `now`, the server's clock in ms (scripts may read it: Redis >= 6.2 replicates their
/// effects, not the script).
pub(super) const LUA_NOW: &str = "local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";

/// Lua: `extend(key, until)`: makes `key` expire no earlier than `until` (ms). A key without
/// an expiry keeps none; a missing one is left missing.
pub(super) const LUA_EXTEND: &str = "local function extend(key, until_ms)
    local left = redis.call('PTTL', key)
    if left >= 0 and now + left < until_ms then redis.call('PEXPIREAT', key, until_ms) end
  end";
