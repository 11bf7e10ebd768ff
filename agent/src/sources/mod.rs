//! Sources of telemetry on the node; each turns what it reads into OTLP batches for the disk buffer.

pub mod file;
