//! `/login`: the admin sign-in form.

use leptos::prelude::*;
use leptos_meta::Title;

#[component]
pub fn LoginPage() -> impl IntoView {
    view! {
        <Title text="Sign in" />
        <section class="card narrow">
            <h1>"Sign in"</h1>
            <p class="notice" role="status">
                "Admin accounts are not available in this build yet, so sign-in is switched off."
            </p>
            <form>
                <label for="email">"Email"</label>
                <input id="email" name="email" type="email" autocomplete="username" disabled=true />
                <label for="password">"Password"</label>
                <input id="password" name="password" type="password" autocomplete="current-password" disabled=true />
                <button type="submit" disabled=true>"Sign in"</button>
            </form>
        </section>
    }
}
