-- GoodsHunter's tables as its API creates them (GORM AutoMigrate of internal/model: uint -> bigint
-- unsigned, time.Time -> datetime(3), string -> longtext, int32 -> int, int -> bigint, bool -> boolean).
-- The daemon never creates or migrates these; the tests do, from this file.
CREATE TABLE users (
  id bigint unsigned AUTO_INCREMENT PRIMARY KEY,
  email varchar(191),
  password longtext NOT NULL,
  role varchar(16) DEFAULT 'admin',
  is_verified boolean DEFAULT false,
  verify_code varchar(16),
  verify_code_expires_at datetime(3) NULL,
  verify_code_sent_at datetime(3) NULL,
  created_at datetime(3) NULL,
  UNIQUE INDEX idx_users_email (email)
);
CREATE TABLE tasks (
  id bigint unsigned AUTO_INCREMENT PRIMARY KEY,
  created_at datetime(3) NULL,
  updated_at datetime(3) NULL,
  user_id bigint unsigned NOT NULL,
  keyword longtext NOT NULL,
  min_price int,
  max_price int,
  platform bigint NOT NULL,
  sort_by bigint NOT NULL,
  sort_order bigint DEFAULT 0,
  task_type varchar(20) DEFAULT 'monitor',
  status varchar(191) DEFAULT 'running',
  last_run_at datetime(3) NULL,
  notify_enabled boolean DEFAULT true,
  baseline_at datetime(3) NULL,
  CONSTRAINT fk_tasks_user FOREIGN KEY (user_id) REFERENCES users (id)
);
CREATE TABLE items (
  id bigint unsigned AUTO_INCREMENT PRIMARY KEY,
  created_at datetime(3) NULL,
  updated_at datetime(3) NULL,
  source_id varchar(191) NOT NULL,
  title longtext,
  price int,
  image_url longtext,
  item_url longtext,
  UNIQUE INDEX idx_items_source_id (source_id)
);
CREATE TABLE task_items (
  task_id bigint unsigned NOT NULL,
  item_id bigint unsigned NOT NULL,
  created_at datetime(3) NULL,
  `rank` bigint DEFAULT 0,
  PRIMARY KEY (task_id, item_id),
  CONSTRAINT fk_task_items_task FOREIGN KEY (task_id) REFERENCES tasks (id),
  CONSTRAINT fk_task_items_item FOREIGN KEY (item_id) REFERENCES items (id)
);
