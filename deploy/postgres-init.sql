-- Run once by the postgres image when its data volume is new (docker-entrypoint-initdb.d):
-- the gateway's state lives in the database POSTGRES_DB names (gateway), Orthanc's index
-- in its own database on the same server.
CREATE DATABASE orthanc OWNER gateway;
