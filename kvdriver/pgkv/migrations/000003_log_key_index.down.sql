-- Back to version 2: watches page through the whole change log again.
DROP INDEX kv_log_key_rev;
