-- Baseline: the sample app's schema as it was before Prisma Migrate was adopted.
-- On a database that already has it, record it as applied instead of running it:
--   pg_migrate action=resolve resolve_as=applied migration=0_init
--   (or: prisma migrate resolve --applied 0_init)

-- CreateTable
CREATE TABLE "users" (
    "id" BIGSERIAL NOT NULL,
    "email" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "plan" TEXT NOT NULL DEFAULT 'free',
    "is_active" BOOLEAN NOT NULL DEFAULT true,
    "created_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "updated_at" TIMESTAMPTZ NOT NULL DEFAULT now(),

    CONSTRAINT "users_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "tasks" (
    "id" BIGSERIAL NOT NULL,
    "user_id" BIGINT NOT NULL,
    "title" TEXT NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'todo',
    "priority" SMALLINT NOT NULL DEFAULT 2,
    "due_at" TIMESTAMPTZ,
    "payload" JSONB NOT NULL DEFAULT '{}',
    "created_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "updated_at" TIMESTAMPTZ NOT NULL DEFAULT now(),

    CONSTRAINT "tasks_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "users_email_key" ON "users"("email");

-- CreateIndex
CREATE INDEX "users_created_at_idx" ON "users"("created_at");

-- CreateIndex
CREATE INDEX "tasks_user_id_idx" ON "tasks"("user_id");

-- CreateIndex
CREATE INDEX "tasks_status_due_at_idx" ON "tasks"("status", "due_at");

-- CreateIndex (partial: written by hand, Prisma cannot express it)
CREATE INDEX "tasks_open_due_idx" ON "tasks"("due_at") WHERE "status" IN ('todo', 'doing');

-- AddCheckConstraints (written by hand)
ALTER TABLE "users" ADD CONSTRAINT "users_plan_check" CHECK ("plan" IN ('free', 'pro', 'team'));
ALTER TABLE "tasks" ADD CONSTRAINT "tasks_status_check" CHECK ("status" IN ('todo', 'doing', 'done', 'archived'));
ALTER TABLE "tasks" ADD CONSTRAINT "tasks_priority_check" CHECK ("priority" BETWEEN 1 AND 4);

-- AddForeignKey
ALTER TABLE "tasks" ADD CONSTRAINT "tasks_user_id_fkey" FOREIGN KEY ("user_id") REFERENCES "users"("id") ON DELETE CASCADE ON UPDATE CASCADE;
