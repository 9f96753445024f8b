-- Where an image's data is: NULL for the controller's own image directory
-- (images uploaded before storage hosts held them, or with none
-- registered), else the storage host whose storaged holds it.
ALTER TABLE images ADD COLUMN location TEXT;

-- Where other hosts reach a storage host's storaged for image data, when
-- not at the URL the controller uses (a separate storage network).
ALTER TABLE storage_hosts ADD COLUMN peer_url TEXT;
