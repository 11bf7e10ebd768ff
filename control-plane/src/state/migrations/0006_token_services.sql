-- A deployer token may be limited to some services: a JSON array of names; NULL for every service.
ALTER TABLE tokens ADD COLUMN services TEXT;
