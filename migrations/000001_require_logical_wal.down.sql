-- Nothing to undo: the up migration only checks wal_level.
SELECT 1;
