-- What happens in the shop's database while the stream runs: one transaction per block (blocks
-- are separated by blank lines). `headwater demo` runs them once the stream and its job are up.
INSERT INTO customers VALUES (3, 'Katherine Johnson', 'kj@example.com', 'US', now());

INSERT INTO orders VALUES (3, 3, 'new', 15.50, now());
INSERT INTO order_items VALUES (3, 1, 'SKU-MUG', 1, 12.00), (3, 2, 'SKU-TEA', 1, 3.50);

-- Order 1 is paid, then shipped: two updates of one row, in two transactions.
UPDATE orders SET status = 'paid' WHERE order_id = 1;

UPDATE orders SET status = 'shipped' WHERE order_id = 1;

UPDATE customers SET email = 'grace@example.com', updated_at = now() WHERE customer_id = 2;

-- Order 2 is cancelled and removed (its line goes with it).
DELETE FROM order_items WHERE order_id = 2;
DELETE FROM orders WHERE order_id = 2;
