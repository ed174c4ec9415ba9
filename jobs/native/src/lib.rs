//! tickflow's compiled core (see README.md beside this file): the books operator's logic,
//! served to the live job per bundle of frames (`stream`) and to the batch backfill per
//! raw-topic partition (`partition`).

pub mod as_of;
pub mod bars;
pub mod book;
pub mod dec;
pub mod envelope;
pub mod events;
pub mod instrument;
pub mod matching;
pub mod nbbo;
pub mod parse;
pub mod partition;
pub mod publish;
#[cfg(feature = "python")]
mod python;
pub mod result_avro;
pub mod rows;
pub mod state;
pub mod stream;
pub mod validate;
pub mod writer_schema;
