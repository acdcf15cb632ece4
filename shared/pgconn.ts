/**
 * Session settings for every connection that reads row values (copy and replication), so that
 * both produce the same text for the same value: ISO dates, UTC, exact floats, hex bytea.
 */
const VALUE_TEXT_SETTINGS = '-c DateStyle=ISO,YMD -c IntervalStyle=postgres -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex -c lc_monetary=C';

/**
 * Timeouts a role or database may set, off for our sessions: a table's COPY runs as long as the
 * table takes (and waits, blocked, while Redis makes room), its snapshot is held by a
 * transaction idle between ranges, the walsender's connection runs for days, and a large batch
 * is written to a Postgres destination in statements as long as it needs. Cut short by a
 * timeout, any of them would be retried for ever.
 */
export const NO_TIMEOUTS = '-c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0';

/** The producer's connections to Postgres: values as text the same way everywhere, no timeouts. */
export const PRODUCER_SESSION_SETTINGS = `${VALUE_TEXT_SETTINGS} ${NO_TIMEOUTS}`;
