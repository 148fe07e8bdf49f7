-- AlterEnum
ALTER TYPE "UserRole" ADD VALUE 'OWNER';
