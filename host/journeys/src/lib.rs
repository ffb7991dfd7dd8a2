//! Rekindle's deliver stage: journeys a marketer writes (`definition`), the engine that
//! walks each customer through them (`engine`), the messages it renders (`messages`) and
//! their delivery through channel plugins, with the host holding secrets and deciding
//! where requests may go (`delivery`, `egress`). Below HTTP: it knows the store and the
//! plugin runtime, nothing of segments, tiles or the server.

pub mod definition;
pub mod delivery;
mod egress;
pub mod engine;
pub mod feedback;
pub mod messages;
pub mod unsubscribe;

pub use definition::{Journey, JourneyError};
pub use delivery::Deliverer;
pub use engine::{Engine, FrequencyCap};
pub use feedback::{FeedbackError, Reports, Webhook};
