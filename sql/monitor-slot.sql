-- Monitoring the Lenkwerk replication slot.
--
--   psql "$LENKWERK_DATABASE_URL" -f sql/monitor-slot.sql
--
-- Run it as a superuser, or as a member of pg_monitor and lenkwerk_admin
-- (which may read lenkwerk.setting, where the slot name is recorded).
--
-- A slot keeps every WAL segment its consumer has not confirmed: a stopped
-- or stuck agent fills the server's disk. Alert on retained_wal, and
-- consider max_slot_wal_keep_size, which invalidates a slot that retains more
-- (wal_status 'lost'; the agent must then resync from a new slot).
-- The slot is the one recorded at provisioning (lw_agent by default).

-- The Lenkwerk slot: is the agent connected, how far behind is it, how much
-- WAL does it keep?
SELECT s.slot_name,
       s.plugin,
       s.active,                     -- is an agent streaming it now?
       s.active_pid,
       s.confirmed_flush_lsn,        -- what the agent has committed to the store
       pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)) AS lag,
       pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn))         AS retained_wal,
       s.wal_status,                 -- reserved/extended fine; unreserved/lost: act now
       pg_size_pretty(s.safe_wal_size) AS safe_wal_size  -- left before max_slot_wal_keep_size
  FROM pg_replication_slots s
 WHERE s.slot_name = coalesce((SELECT value FROM lenkwerk.setting WHERE name = 'slot_name'), 'lw_agent');

-- Every slot of the server: forgotten ones retain WAL just the same.
SELECT slot_name, slot_type, database, active,
       pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)) AS retained_wal,
       wal_status
  FROM pg_replication_slots
 ORDER BY pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) DESC NULLS LAST;

-- The agent's connection (a walsender), when it streams.
SELECT pid, usename, application_name, client_addr, state,
       sent_lsn, flush_lsn, replay_lag
  FROM pg_stat_replication
 WHERE pid = (SELECT active_pid FROM pg_replication_slots
               WHERE slot_name = coalesce((SELECT value FROM lenkwerk.setting WHERE name = 'slot_name'), 'lw_agent'));

-- What the slot's publication covers.
SELECT pubname, schemaname, tablename
  FROM pg_publication_tables
 WHERE pubname = coalesce((SELECT value FROM lenkwerk.setting WHERE name = 'publication_name'), 'bagger_lw_storage')
 ORDER BY tablename;
