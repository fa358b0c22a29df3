-- The shop's tables as its database has them, and the rows already there when the stream starts
-- (its backfill). `headwater demo` runs this in a fresh database `shop` of the local PostgreSQL.
CREATE TABLE customers (
    customer_id bigint PRIMARY KEY,
    name        text NOT NULL,
    email       text,
    country     text,
    updated_at  timestamptz
);
CREATE TABLE orders (
    order_id    bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers,
    status      text NOT NULL,
    total       numeric(10, 2),
    placed_at   timestamptz NOT NULL
);
CREATE TABLE order_items (
    order_id    bigint REFERENCES orders ON DELETE CASCADE,
    line        integer,
    sku         text NOT NULL,
    quantity    integer NOT NULL,
    unit_price  numeric(10, 2) NOT NULL,
    PRIMARY KEY (order_id, line)
);
INSERT INTO customers VALUES
    (1, 'Ada Lovelace', 'ada@example.com', 'GB', '2026-11-24 09:00:00+00'),
    (2, 'Grace Hopper', NULL, 'US', '2026-11-24 09:05:00+00');
INSERT INTO orders VALUES
    (1, 1, 'new', 42.00, '2026-11-25 10:00:00+00'),
    (2, 2, 'new', 9.90, '2026-11-25 11:30:00+00');
INSERT INTO order_items VALUES
    (1, 1, 'SKU-BOOK', 2, 21.00),
    (2, 1, 'SKU-PEN', 1, 9.90);
