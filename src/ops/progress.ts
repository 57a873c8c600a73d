/** Progress reports from long operations: the CLI renders them (bar, lines, JSON). */
export interface Progress {
  /** What is happening: "copying", "hashing", "verifying", "trimming", ... */
  phase: string;
  /** Bytes done in this phase. */
  done: number;
  /** Bytes this phase will cover (0 if unknown). */
  total: number;
}

export type OnProgress = (p: Progress) => void;

/** Options every long operation accepts (principle 8: dependencies come in). */
export interface OpOptions {
  signal?: AbortSignal;
  onProgress?: OnProgress;
}
