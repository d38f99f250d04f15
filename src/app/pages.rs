//! The events page (its audit view comes with the admin UI) and the 404 page.

use leptos::prelude::*;
use leptos_meta::Title;

#[component]
pub fn EventsPage() -> impl IntoView {
    view! {
        <Title text="Events" />
        <h1>"Events"</h1>
        <p>"The audit log appears here once the key lifecycle records events."</p>
    }
}

#[component]
pub fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    {
        if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
            response.set_status(axum::http::StatusCode::NOT_FOUND);
        }
    }
    view! {
        <Title text="Not found" />
        <h1>"Not found"</h1>
        <p>"There is no page at this address. "<a href="/">"Go to the overview"</a>"."</p>
    }
}
