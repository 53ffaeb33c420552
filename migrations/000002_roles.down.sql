-- Roles are cluster-wide and may serve other Lenkwerk databases, so they are
-- deliberately left in place. Everything this database granted them goes
-- with the objects the later down migrations drop. To remove them once no
-- database uses them:
--   DROP ROLE lenkwerk_agent; DROP ROLE lenkwerk_config; DROP ROLE lenkwerk_admin;
SELECT 1;
