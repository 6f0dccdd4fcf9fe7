"""The API documentation at /docs works in a real browser under its Content-Security-Policy: the
Swagger UI files come from this app, the document loads, and "Try it out" reaches the API."""


def test_the_docs_render_every_tag_and_try_it_out_calls_the_api(page):
    page.goto("/docs")
    # Rendered by the UI's script from /openapi.json: nothing of this is in the HTML the server sent.
    page.get_by_text("Wallet Platform API").first.wait_for()
    for tag in ("auth", "wallets", "admin"):
        assert page.locator(f"#operations-tag-{tag}").count() == 1, tag
    page.locator("#operations-health-get_health").click()
    page.get_by_role("button", name="Try it out").click()
    with page.expect_response(lambda response: response.url.endswith("/health")) as answer:
        page.get_by_role("button", name="Execute").click()
    assert answer.value.status == 200
    # The page fixture fails the test on any console error: a CSP violation would be one.
