-- What Bagger's extension bagger_lw_storage put into this database, one
-- fact per row, for `lenkwerk migrate adopt` to compare with what it
-- expects (bagger_lw_storage--0.0.1.facts). $1 is the extension's oid. Run
-- with search_path = pg_catalog, so every name is schema-qualified.
WITH member AS (
    SELECT classid, objid FROM pg_depend
     WHERE refclassid = 'pg_extension'::regclass AND refobjid = $1 AND deptype = 'e'
),
rel AS (
    -- The extension's tables and sequences, and every other relation in a
    -- schema of the extension (adopting drops those schemas).
    SELECT c.oid, c.relkind, c.relname, c.relnamespace,
           EXISTS (SELECT FROM member m WHERE m.classid = 'pg_class'::regclass AND m.objid = c.oid) AS is_member
      FROM pg_class c
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
       AND (c.oid IN (SELECT objid FROM member WHERE classid = 'pg_class'::regclass)
            OR c.relnamespace IN (SELECT objid FROM member WHERE classid = 'pg_namespace'::regclass))
),
tbl AS (SELECT * FROM rel WHERE relkind IN ('r', 'p'))
SELECT 'schema ' || quote_ident(n.nspname)
  FROM member m JOIN pg_namespace n ON n.oid = m.objid
 WHERE m.classid = 'pg_namespace'::regclass
UNION ALL
SELECT CASE WHEN r.is_member THEN '' ELSE 'not in the extension: ' END ||
       CASE r.relkind WHEN 'r' THEN 'table ' WHEN 'p' THEN 'partitioned table ' WHEN 'v' THEN 'view '
                      WHEN 'm' THEN 'materialized view ' ELSE 'foreign table ' END ||
       r.oid::regclass::text
  FROM rel r
 WHERE r.relkind <> 'S'
UNION ALL
SELECT 'column ' || t.oid::regclass::text || '.' || quote_ident(a.attname) || ' ' ||
       format_type(a.atttypid, a.atttypmod) ||
       CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END ||
       coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '') ||
       CASE WHEN a.attgenerated <> '' THEN ' GENERATED' ELSE '' END ||
       CASE WHEN NOT a.attislocal THEN ' (inherited)' ELSE '' END
  FROM tbl t
  JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef d ON d.adrelid = t.oid AND d.adnum = a.attnum
UNION ALL
SELECT 'table ' || t.oid::regclass::text || ' inherits ' || i.inhparent::regclass::text
  FROM tbl t JOIN pg_inherits i ON i.inhrelid = t.oid
UNION ALL
SELECT 'constraint ' || t.oid::regclass::text || ' ' || quote_ident(c.conname) || ' ' ||
       pg_get_constraintdef(c.oid)
  FROM tbl t JOIN pg_constraint c ON c.conrelid = t.oid
UNION ALL
SELECT 'index ' || pg_get_indexdef(x.indexrelid)
  FROM tbl t JOIN pg_index x ON x.indrelid = t.oid
 WHERE NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = x.indexrelid AND c.conrelid = t.oid)
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(g.oid)
  FROM tbl t JOIN pg_trigger g ON g.tgrelid = t.oid AND NOT g.tgisinternal
UNION ALL
SELECT 'rule ' || quote_ident(w.rulename) || ' on ' || t.oid::regclass::text
  FROM tbl t JOIN pg_rewrite w ON w.ev_class = t.oid
UNION ALL
SELECT 'policy ' || quote_ident(p.polname) || ' on ' || t.oid::regclass::text
  FROM tbl t JOIN pg_policy p ON p.polrelid = t.oid
UNION ALL
SELECT 'row level security on ' || t.oid::regclass::text
  FROM tbl t JOIN pg_class c ON c.oid = t.oid
 WHERE c.relrowsecurity
UNION ALL
SELECT CASE WHEN s.is_member THEN '' ELSE 'not in the extension: ' END ||
       'sequence ' || s.oid::regclass::text || ' ' || format_type(q.seqtypid, NULL) ||
       coalesce(' owned by ' || d.refobjid::regclass::text || '.' || quote_ident(a.attname), '')
  FROM rel s
  JOIN pg_sequence q ON q.seqrelid = s.oid
  LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
        AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a'
  LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE s.relkind = 'S'
UNION ALL
SELECT CASE WHEN EXISTS (SELECT FROM member m WHERE m.classid = 'pg_proc'::regclass AND m.objid = p.oid)
            THEN '' ELSE 'not in the extension: ' END ||
       'function ' || p.oid::regprocedure::text || ' returns ' || pg_get_function_result(p.oid)
  FROM pg_proc p
 WHERE p.oid IN (SELECT objid FROM member WHERE classid = 'pg_proc'::regclass)
    OR p.pronamespace IN (SELECT objid FROM member WHERE classid = 'pg_namespace'::regclass)
UNION ALL
SELECT 'not in the extension: type ' || y.oid::regtype::text
  FROM pg_type y
 WHERE y.typnamespace IN (SELECT objid FROM member WHERE classid = 'pg_namespace'::regclass)
   AND y.typrelid = 0 AND y.typelem = 0
   AND NOT EXISTS (SELECT FROM member m WHERE m.classid = 'pg_type'::regclass AND m.objid = y.oid)
UNION ALL
SELECT 'member ' || pg_describe_object(m.classid, m.objid, 0)
  FROM member m
 WHERE m.classid NOT IN ('pg_namespace'::regclass, 'pg_class'::regclass, 'pg_proc'::regclass)
