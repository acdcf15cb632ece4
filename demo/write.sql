-- One round of demo traffic: a new order, a status change and an occasional delete.
INSERT INTO orders (customer_id, amount, details) VALUES (1 + (random() * 99)::int, round((random() * 500)::numeric, 2), '{"items": 1}');
UPDATE orders SET status = 'shipped' WHERE id = (SELECT id FROM orders WHERE status = 'new' ORDER BY id LIMIT 1);
DELETE FROM orders WHERE id = (SELECT min(id) FROM orders) AND random() < 0.2;
