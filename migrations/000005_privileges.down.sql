-- Back to the state after migration 4: no grants to the Lenkwerk roles,
-- functions executable by PUBLIC (PostgreSQL's default).
REVOKE ALL ON ALL TABLES IN SCHEMA storage FROM lenkwerk_config, lenkwerk_agent;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA storage FROM lenkwerk_config;
REVOKE ALL ON SCHEMA storage FROM lenkwerk_config, lenkwerk_agent;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA storage FROM lenkwerk_config;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA storage TO PUBLIC;
