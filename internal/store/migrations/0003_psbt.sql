-- 0003: the PSBT answered for a Bitcoin request (base64, with the
-- appliance's partial signatures), beside the finalised transaction.
ALTER TABLE requests ADD COLUMN signed_psbt TEXT NOT NULL DEFAULT '';
