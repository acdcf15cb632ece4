/**
 * Session settings for every connection that reads row values (copy and replication), so that
 * both produce the same text for the same value: ISO dates, UTC, exact floats, hex bytea.
 */
export const VALUE_TEXT_SETTINGS =
  '-c DateStyle=ISO,YMD -c IntervalStyle=postgres -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex -c lc_monetary=C';
