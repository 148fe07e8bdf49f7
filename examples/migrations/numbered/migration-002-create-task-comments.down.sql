-- Reverts migration 002
DROP TABLE task_comments;
