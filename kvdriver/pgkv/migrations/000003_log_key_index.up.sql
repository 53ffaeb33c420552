-- pgkv schema, version 3: an index on the change log by key and revision,
-- so a watch of a prefix reads that prefix's history only and finds its
-- next revision without paging through every other key's revisions.
-- Built in the migration's transaction (not CONCURRENTLY): writes wait
-- while it builds, which takes seconds for a log kept at the default
-- 100,000 revisions.
CREATE INDEX kv_log_key_rev ON kv_log (key, rev);
