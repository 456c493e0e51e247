-- Run once by the postgres image on an empty volume (docker-entrypoint-initdb.d).
-- POSTGRES_DB already created "prefect"; these are owned by POSTGRES_USER like it.
CREATE DATABASE mlflow;
CREATE DATABASE optuna;
