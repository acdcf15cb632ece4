/**
 * Cuts `COPY … TO STDOUT (FORMAT csv)` output into pieces that end on a row boundary, without
 * parsing values: a newline ends a row unless it is inside quotes, and a doubled quote inside
 * quotes toggles the state twice, so one bit of state across chunks is enough.
 */
export class CsvRowCutter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private inQuotes = false;

  /** Returns the complete rows this chunk finishes (as one buffer, with their count); keeps the rest. */
  push(chunk: Buffer): { rows: Buffer; count: number } | undefined {
    let lastEnd = -1;
    let count = 0;
    let inQuotes = this.inQuotes;
    for (let i = 0; i < chunk.length; i++) {
      const byte = chunk[i];
      if (byte === 0x22) inQuotes = !inQuotes;
      else if (byte === 0x0a && !inQuotes) {
        lastEnd = i;
        count++;
      }
    }
    this.inQuotes = inQuotes;
    if (lastEnd === -1) {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      return undefined;
    }
    const rows = Buffer.concat([...this.pending, chunk.subarray(0, lastEnd + 1)], this.pendingBytes + lastEnd + 1);
    const rest = chunk.subarray(lastEnd + 1);
    this.pending = rest.length > 0 ? [rest] : [];
    this.pendingBytes = rest.length;
    return { rows, count };
  }

  end(): void {
    if (this.pendingBytes > 0) throw new Error('COPY output ended in the middle of a row');
  }
}
