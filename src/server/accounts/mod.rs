//! Who may use Signet: admin accounts and their sign-in rules ([`admins`]), browser
//! sessions ([`sessions`]) and API tokens for services ([`tokens`]).

pub mod admins;
pub mod sessions;
pub mod tokens;
