"""Loading CSV and JSONL files into application tables (`idxr-pg load`).

The pure parts: `scan` (one pass over the file: size, sha256, what the encoding check needs),
`encoding` (BOM, detection, `--encoding`), `lines` (physical lines with their byte ranges),
`chunks` (raw CSV chunks cut at record ends, for COPY to parse), `formats` (CSV and JSONL
records, bad lines), `plan` (file fields to table columns, `--map`), `rejects` (the YAML error
file). `load` runs a load with the SQL of `idxr_pg.db.loads` (where the row fingerprint is
defined).
"""
