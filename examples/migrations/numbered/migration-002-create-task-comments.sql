-- Migration 002: comments on tasks
CREATE TABLE task_comments (
    id          bigserial   PRIMARY KEY,
    task_id     bigint      NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    author_id   bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body        text        NOT NULL CHECK (length(body) > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX task_comments_task_id_idx ON task_comments (task_id);
