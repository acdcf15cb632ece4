-- Demo data for `docker compose up`: two tables, a publication, and a few rows.
CREATE TABLE customers (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL,
  email text UNIQUE,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES customers (id),
  amount numeric(12, 2) NOT NULL,
  status text NOT NULL DEFAULT 'new',
  details jsonb
);
INSERT INTO customers (name, email)
SELECT 'Customer ' || g, 'customer' || g || '@example.com' FROM generate_series(1, 100) g;
INSERT INTO orders (customer_id, amount, details)
SELECT 1 + g % 100, round((random() * 500)::numeric, 2), jsonb_build_object('items', 1 + g % 5) FROM generate_series(1, 1000) g;
CREATE PUBLICATION demo FOR TABLE customers, orders;
