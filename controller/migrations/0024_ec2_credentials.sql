-- EC2-style credentials (Keystone's OS-EC2 extension): an access key and its
-- secret, for one user in one project. storaged's S3 API verifies request
-- signatures with them, asking the controller for one key at a time.
CREATE TABLE ec2_credentials (
    access TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    user_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ec2_credentials_user ON ec2_credentials (user_id);
