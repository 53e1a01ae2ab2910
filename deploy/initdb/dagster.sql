-- The Dagster instance's database, beside the catalog's (POSTGRES_DB).
CREATE DATABASE dagster;
