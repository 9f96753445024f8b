-- Glance image members: another project an owner shares a `shared` image
-- with, and whether that project accepted it (pending, accepted, rejected).
CREATE TABLE image_members (
    image_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (image_id, member_id)
);
CREATE INDEX image_members_member ON image_members (member_id);
