//! Small pieces several pages use.

use super::guard::describe;
use leptos::prelude::*;

/// A button that copies `text` to the clipboard and then says so.
#[component]
pub fn CopyButton(
    text: String,
    #[prop(into)] label: String,
    /// Off until the page can act (hydrated), where that matters.
    #[prop(optional, into)]
    disabled: Signal<bool>,
) -> impl IntoView {
    let copied = RwSignal::new(false);
    let copy = move |_| {
        #[cfg(feature = "hydrate")]
        if let Some(w) = web_sys::window() {
            let _ = w.navigator().clipboard().write_text(&text);
            copied.set(true);
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = (&text, copied);
    };
    view! {
        <button type="button" class="ghost small" disabled=move || disabled.get() on:click=copy>
            {move || if copied.get() { "Copied".to_string() } else { label.clone() }}
        </button>
    }
}

/// A failure's message, as every page shows one.
pub fn error_note(e: &ServerFnError) -> AnyView {
    view! { <p class="error" role="alert">{describe(e)}</p> }.into_any()
}

/// The latest outcome of an action, shown only when it failed.
pub fn failure<T>(outcome: Option<Result<T, ServerFnError>>) -> AnyView {
    match outcome {
        Some(Err(e)) => error_note(&e),
        _ => ().into_any(),
    }
}
