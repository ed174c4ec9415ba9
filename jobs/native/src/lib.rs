//! tickflow's compiled batch engine (see README.md beside this file): the books operator's
//! logic over one raw-topic partition, module for module the twin of the Python one.

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
pub mod rows;
pub mod state;
