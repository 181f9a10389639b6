"""The status page in a real headless Chromium, against the real controller
and real OVS bridges in namespaces."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from tests.browser import LAPTOP, PHONE, Browser
from tests.test_api import TOKEN, flows_with, start

ROOT = Path(__file__).resolve().parent.parent
# LISP_CONTROLLER_SCREENSHOTS=docs keeps the screenshots the last test takes
# (that is how docs/status-page*.png are made); otherwise they are checked
# and thrown away with the testbed.
SCREENSHOTS = os.environ.get("LISP_CONTROLLER_SCREENSHOTS")
HV1, HV2 = "00008ad828ce7949", "00001e2e0e0cf040"


def card(dpid: str) -> str:
    return f'#bridges [data-dpid="{dpid}"]'


def row(key: str) -> str:
    return f'#rows tr[data-key="{key}"]'


def counter(b: Browser, key: str, name: str = "packets") -> int:
    value = b.attr(f"{row(key)} .c-{name}", "data-v")
    return -1 if value is None else int(value)


def test_page_and_assets_are_served_with_types_and_etags(testbed, tmp_path):
    ov, ctl, api = start(testbed, tmp_path)
    status, html = api("GET", "/")
    assert status == 200 and "<title>lisp-controller" in html and "/static/app.js" in html
    for name, ctype in [("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")]:
        status, _ = api("GET", f"/static/{name}")
        assert status == 200, name
    status, _ = api("GET", "/static/style.css")
    etag = api.last_headers["ETag"]
    assert status == 200 and api.last_headers["Content-Type"].startswith("text/css")
    assert "default-src 'self'" in api.last_headers["Content-Security-Policy"]
    assert api("GET", "/static/style.css", headers={"If-None-Match": etag}) == (304, "")
    for path in ("/static/index.html", "/static/../api.py", "/static/nothing.js"):
        status, body = api("GET", path)
        assert status == 404 and body["error"]["status"] == 404, (path, body)
    status, body = api("GET", "/v1/mappings?counters=maybe")
    assert status == 400 and body["error"]["field"] == "counters"
    assert "Traceback" not in ctl.log()


def test_page_follows_bridges_mappings_counters_and_outages(testbed, tmp_path):
    ov, ctl, api = start(testbed, tmp_path)
    hv1, hv2 = ov.hypervisors
    vm1, vm2 = ov.vms
    with Browser(testbed, ov.controller_ns.ns) as b:
        b.open()
        # Both bridges, with what OVS says about their ports.
        for hv, dpid in ((hv1, HV1), (hv2, HV2)):
            b.wait(lambda d: b.attr(card(dpid), "data-state") == "up", what=f"{dpid} shown up")
            text = b.text(card(dpid))
            ports = hv.port_numbers()
            assert f"lisp0\n{ports['lisp0']}" in text and f"vnet0\n{ports['vnet0']}" in text, text
            flows = api("GET", f"/v1/datapaths/{dpid}")[1]["datapath"]["flows_desired"]
            assert "lisp-gpe" in text and f"{flows} installed / {flows} desired" in text
        assert "192.168.1.249" in b.text(card(HV1)) and "52:54:00:b8:27:75" in b.text(card(HV1))
        assert "10.1.1.30" in b.text(card(HV2))
        assert b.text("#summary").startswith("2/2 bridges up")
        b.wait(lambda d: b.css("#last-updated"), what="a last-updated time")

        # A mapping added through the API appears, without a reload.
        b.js("window.notReloaded = true")
        status, _ = api("POST", "/v1/mappings", {"iid": 1000, "eid": "10.2.0.0/16", "ttl": 30,
                                                  "rlocs": [{"address": "192.168.1.252", "priority": 1, "weight": 60}]})
        assert status == 201
        b.wait(lambda d: b.css(row("1000|10.2.0.0/16")), what="the new mapping's row")
        assert b.js("return window.notReloaded") is True
        text = b.text(row("1000|10.2.0.0/16"))
        assert "192.168.1.252" in text and "1/60" in text and "of 30 min" in text and "api" in text

        # Its flow's counters (vm1 -> vm2 uses the endpoint's host mapping)
        # grow when the VMs ping; the API says the same.
        host = "1000|10.1.1.30/32"
        b.wait(lambda d: counter(b, host) >= 0, what="counters from the switches")
        before, before_bytes = counter(b, host), counter(b, host, "bytes")
        vm1.wait_reachable(vm2.ip)
        assert vm1.ping(vm2.ip, count=5) == (5, 5)
        b.wait(lambda d: counter(b, host) >= before + 5, timeout=20, what="packet counter to grow by 5")
        assert counter(b, host, "bytes") >= before_bytes + 5 * 84
        listed = api("GET", "/v1/mappings?counters=true&prefix=10.1.1.30/32")[1]
        assert listed["mappings"][0]["counters"]["packets"] >= before + 5 and listed["counters_at"]

        # A bridge that disconnects is shown down, and up again when it is back.
        hv2.vsctl("del-controller", "br2")
        b.wait(lambda d: b.attr(card(HV2), "data-state") == "down", what="hv2 shown down")
        assert "DOWN" in b.text(card(HV2)) and b.text("#summary").startswith("1/2 bridges up")
        assert b.attr(card(HV1), "data-state") == "up"
        hv2.vsctl("set-controller", "br2", f"tcp:{ov.controller_ns.address}:6653")
        b.wait(lambda d: b.attr(card(HV2), "data-state") == "up", what="hv2 shown up again")

        # The controller stops answering: the page says so, keeps the last data.
        ctl.stop()
        b.wait(lambda d: b.attr("#live", "data-state") == "offline", what="the offline state")
        assert "not answering" in b.text("#offline") and b.css(row("1000|10.2.0.0/16"))
    assert "Traceback" not in ctl.log()


def test_form_adds_and_deletes_mappings_with_the_token_asked_once(testbed, tmp_path):
    ov, ctl, api = start(testbed, tmp_path, f'[api]\ntoken = "{TOKEN}"\n', token=TOKEN)
    with Browser(testbed, ov.controller_ns.ns) as b:
        b.open()
        b.wait(lambda d: b.css(row("1000|10.1.1.20/32")), what="the map-cache")

        def submit(**fields: str) -> None:
            for name in ("iid", "eid", "rlocs", "ttl"):
                box = b.one(f"#f-{name}")
                box.clear()
                box.send_keys(fields.get(name, ""))
            b.one("#f-submit").click()

        # The first change asks for the token, then goes through.
        submit(iid="1000", eid="10.9.0.0/16", rlocs="192.168.1.252,1,100 192.168.1.249,2,100")
        b.wait(lambda d: b.one("#token-dialog").is_displayed(), what="the token dialog")
        assert "bearer token" in b.text("#token-why")
        b.one("#token-input").send_keys(TOKEN + Keys.ENTER)
        b.wait(lambda d: "Added" in b.text("#form-message"), what="the success message")
        assert b.text("#form-message").count("confirmed") == 2
        for hv in ov.hypervisors:
            assert flows_with(hv, "nw_dst=10.9.0.0/16 actions=set_field:192.168.1.252->tun_dst")
        b.wait(lambda d: b.css(row("1000|10.9.0.0/16")), what="the added row")

        # API errors are shown next to the form, naming the field.
        submit(iid="1000", eid="10.9.0.1/16")
        b.wait(lambda d: "Error 400" in b.text("#form-message"), what="the 400 error")
        assert "mapping.eid" in b.text("#form-message") and "not a valid prefix" in b.text("#form-message")
        assert b.attr("#f-eid", "aria-invalid") == "true"
        submit(iid="1000", eid="10.1.1.20/32", rlocs="192.168.1.252")
        b.wait(lambda d: "Error 409" in b.text("#form-message"), what="the 409 error")
        assert "owned by the endpoint" in b.text("#form-message")

        # The token is not asked again in this tab.
        submit(iid="1000", eid="10.8.0.0/16", rlocs="192.168.1.249", ttl="5")
        b.wait(lambda d: "Added" in b.text("#form-message"), what="the second add")
        assert not b.one("#token-dialog").is_displayed()
        assert flows_with(ov.hypervisors[1], "nw_dst=10.8.0.0/16")

        # Delete from the table: one click arms, the second deletes.
        b.wait(lambda d: b.css(f'{row("1000|10.9.0.0/16")} button.del'), what="a delete button")
        assert not b.css(f'{row("1000|10.1.1.20/32")} button.del')  # not the API's to delete
        b.one(f'{row("1000|10.9.0.0/16")} button.del').click()
        b.wait(lambda d: b.css(f'{row("1000|10.9.0.0/16")} button.del.armed'), what="the armed button")
        b.one(f'{row("1000|10.9.0.0/16")} button.del').click()
        b.wait(lambda d: "Deleted" in b.text("#form-message"), what="the delete message")
        b.wait(lambda d: not b.css(row("1000|10.9.0.0/16")), what="the row to go")
        for hv in ov.hypervisors:
            assert not flows_with(hv, "10.9.0.0/16")
    assert "Traceback" not in ctl.log()


def test_pages_orders_and_searches_are_the_controllers_answers(testbed, tmp_path):
    """With more mappings than a page, each page, order and search the
    table shows is what the controller answers for the same query (GET
    /v1/mappings with limit, offset, sort, order, q): the browser holds one
    page and sorts or filters nothing itself."""
    ov, ctl, api = start(testbed, tmp_path)
    many = [{"iid": 3000 + i % 3, "eid": f"10.{20 + i // 250}.{i % 250}.0/24",
             "rlocs": [f"192.168.1.{10 + i % 97}"]} for i in range(1200)]
    assert api("POST", "/v1/mappings/bulk", {"mappings": many})[0] == 200
    total = api("GET", "/v1/mappings?limit=1")[1]["total"]
    assert total == 1202  # and the host mappings of the blog's two endpoints

    def server(query: str) -> list[str]:
        body = api("GET", f"/v1/mappings?limit=50&{query}")[1]
        return [f"{m['iid']}|{m['eid']}" for m in body["mappings"]]

    with Browser(testbed, ov.controller_ns.ns) as b:
        def shown() -> list[str]:  # read at once: a poll may redraw the rows meanwhile
            return b.js("return [...document.querySelectorAll('#rows tr[data-key]')].map((r) => r.dataset.key)")

        def asked() -> list[str]:
            return b.js("return performance.getEntriesByType('resource').map((e) => e.name)"
                        ".filter((n) => n.includes('/v1/mappings?'))")

        b.open()
        b.wait(lambda d: f"of {total:,}" in b.text("#shown"), what="the first page")
        Select(b.one("#page-size")).select_by_visible_text("50")
        b.wait(lambda d: b.text("#shown") == f"1–50 of {total:,}", what="pages of 50")
        assert shown() == server("offset=0") and b.text("#page-info") == "page 1 of 25"

        # The second page is the controller's second page, asked for as such.
        b.one("#next").click()
        b.wait(lambda d: b.text("#shown").startswith("51–100"), what="page 2")
        assert shown() == server("offset=50")
        assert any("limit=50" in u and "offset=50" in u for u in asked()), asked()
        assert not set(shown()) & set(server("offset=0"))

        # Sorting by a column goes back to page 1 of the controller's order.
        b.one('th[data-sort="rlocs"] button').click()
        b.wait(lambda d: shown() == server("sort=rlocs&order=asc"), what="sorted by RLOC by the controller")
        assert b.text(f"{row(shown()[0])} .c-rlocs").startswith("192.168.1.10")  # the lowest address
        b.one('th[data-sort="rlocs"] button').click()
        b.wait(lambda d: shown() == server("sort=rlocs&order=desc"), what="RLOCs descending")
        assert b.attr('th[data-sort="rlocs"]', "aria-sort") == "descending"
        assert any("sort=rlocs" in u and "order=desc" in u for u in asked())

        # A search is the controller's filter: only matching rows, counted there.
        b.one("#search").send_keys("192.168.1.42")
        matching = api("GET", "/v1/mappings?limit=1&q=192.168.1.42")[1]["total"]
        assert 0 < matching < 50
        b.wait(lambda d: b.text("#shown") == f"1–{matching} of {matching} (filtered from {total:,})",
               what="the filtered count")
        assert shown() == server("q=192.168.1.42&sort=rlocs&order=desc")
        assert all("192.168.1.42" in b.text(row(k)) for k in shown())
        assert any("q=192.168.1.42" in u for u in asked())
        b.one("#search").send_keys(Keys.CONTROL, "a", Keys.BACKSPACE)
        b.wait(lambda d: b.text("#shown") == f"1–50 of {total:,}", what="the search cleared")
    assert "Traceback" not in ctl.log()


THIRD_BRIDGE = """
[[bridge]]
datapath_id = "0000000000000003"
rloc = "192.168.1.253"
iid = 1000
"""


def _showcase(api) -> None:
    """Mappings of several kinds, for the screenshots, and many more."""
    few = [{"iid": 1000, "eid": "10.2.0.0/16", "rlocs": [{"address": "192.168.1.252", "priority": 1, "weight": 70},
                                                          {"address": "192.168.1.253", "priority": 1, "weight": 30}]},
           {"iid": 1000, "eid": "10.3.0.0/16", "rlocs": ["192.168.1.253"], "ttl": 60},
           {"iid": 1000, "eid": "10.4.0.0/14", "rlocs": [{"address": "192.168.1.249", "priority": 1},
                                                         {"address": "192.168.1.252", "priority": 255}]},
           {"iid": 1000, "eid": "10.66.0.0/16", "action": "drop"},
           {"iid": 1000, "eid": "10.67.0.0/16", "action": "send-map-request", "ttl": 15},
           {"iid": 1000, "eid": "fd00:1000::/48", "rlocs": ["192.168.1.252"]},
           {"iid": 2000, "eid": "172.16.0.0/12", "action": "native-forward"}]
    many = [{"iid": 5000 + i // 2500, "eid": f"10.{100 + i // 250}.{i % 250}.0/24",
             "rlocs": [f"192.168.1.{249 + i % 5}"]} for i in range(10_000)]
    status, body = api("POST", "/v1/mappings/bulk", {"mappings": few + many})
    assert status == 200, body


def test_ten_thousand_rows_phone_layout_and_screenshots(testbed, tmp_path):
    ov, ctl, api = start(testbed, tmp_path, THIRD_BRIDGE)
    vm1, vm2 = ov.vms
    _showcase(api)
    vm1.wait_reachable(vm2.ip)
    vm1.ping(vm2.ip, count=20, interval=0.05)
    vm2.ping(vm1.ip, count=8, interval=0.05)
    ov.hypervisors[2].vsctl("del-controller", "br2")  # one bridge down: how a problem looks
    shots = tmp_path / "shots"
    shots.mkdir()
    with Browser(testbed, ov.controller_ns.ns, size=LAPTOP) as b:
        b.open()
        b.wait(lambda d: "of 10,009" in b.text("#shown"), timeout=30, what="10,009 mappings listed")
        b.wait(lambda d: b.attr(card("0000000000000003"), "data-state") == "down", what="hv3 down")
        b.wait(lambda d: counter(b, "1000|10.1.1.30/32") >= 20, timeout=30, what="counters")
        assert len(b.css("#rows tr")) == 100  # one page in the DOM, not 10,000 rows

        # Search, sort and page through 10,009 rows: each answers at once.
        def timed(action, done, what: str) -> float:
            started = time.monotonic()
            action()
            b.wait(lambda d: done(), what=what)
            return time.monotonic() - started
        search = b.one("#search")
        took = [timed(lambda: search.send_keys("10.139.7.0/24"), lambda: "of 1 (filtered" in b.text("#shown"),
                      "a search with one hit")]
        assert b.text("#rows").split()[:2] == ["5003", "10.139.7.0/24"], b.text("#rows")
        took.append(timed(lambda: search.send_keys(Keys.CONTROL, "a", Keys.BACKSPACE),
                          lambda: "of 10,009" in b.text("#shown"), "the search cleared"))
        took.append(timed(lambda: b.one('th[data-sort="packets"] button').click(),
                          lambda: b.attr('th[data-sort="packets"]', "aria-sort") == "descending", "sort by packets"))
        busiest = b.css("#rows tr")[0].get_attribute("data-key")
        assert busiest in ("1000|10.1.1.30/32", "1000|10.1.1.20/32"), busiest
        took.append(timed(lambda: b.one("#next").click(), lambda: b.text("#shown").startswith("101–200"), "page 2"))
        print("search, clear, sort, page: %s s" % ", ".join(f"{t:.2f}" for t in took))
        assert max(took) < 1.5, took
        b.one('th[data-sort="iid"] button').click()
        b.one("#prev").click()
        b.wait(lambda d: b.text("#shown").startswith("1–100"), what="page 1 again")
        assert b.js("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        to_top = "window.scrollTo(0, 0); document.querySelector('.table-wrap').scrollTop = 0"
        b.js(to_top)
        b.driver.set_window_size(LAPTOP[0], 1100)  # the bridges and the top of the map-cache
        b.js(to_top)
        b.screenshot(shots / "status-page.png")

        b.driver.set_window_size(PHONE[0], 1700)
        b.wait(lambda d: b.js("return window.innerWidth") <= PHONE[0], what="phone width")
        assert b.js("return document.documentElement.scrollWidth <= window.innerWidth + 1"), "horizontal scroll on a phone"
        assert b.js("return getComputedStyle(document.querySelector('#rows tr')).display") == "grid"
        b.js("document.getElementById('mapcache-title').scrollIntoView()")  # the bridges are in the laptop shot
        b.screenshot(shots / "status-page-phone.png")
    for shot in shots.iterdir():
        assert shot.stat().st_size > 20_000, shot
        if SCREENSHOTS:
            shutil.copy(shot, ROOT / SCREENSHOTS / shot.name)
    assert "Traceback" not in ctl.log()


FITS = """
const card = arguments[0], name = arguments[1];
const box = card.getBoundingClientRect();
const named = [...card.querySelectorAll("[title]")].filter((e) => e.getAttribute("title") === name);
return {
  card: [card.clientWidth, card.scrollWidth],
  // the element that shows the name (a port chip, a table cell), and whether the name is cut
  named: named.map((e) => {
    const shown = e.closest(".port, td, h3") || e;
    return {shown: shown.tagName + "." + shown.className, scroll: shown.scrollWidth,
            left: shown.getBoundingClientRect().left - box.left, right: shown.getBoundingClientRect().right - box.left,
            cut: getComputedStyle(e).textOverflow === "ellipsis"
                 && (e.scrollWidth > e.clientWidth || e.scrollHeight > e.clientHeight)};
  }),
  // every element of the card, not only the named ones, stays inside it
  outside: [...card.querySelectorAll("*")].filter((e) => e.getBoundingClientRect().right > box.right + 1)
                                          .map((e) => e.tagName + "." + e.className),
  page: document.documentElement.scrollWidth <= window.innerWidth + 1,
};
"""


def test_a_long_port_name_stays_inside_its_card_with_the_whole_name_in_a_tooltip(testbed, tmp_path):
    """A store written by an earlier version may hold an endpoint whose
    port has a 300-character name (names are limited to 15 bytes now): its
    card, on a laptop and on a phone, cuts the name where it does not fit
    and the tooltip (title) holds all of it."""
    import ipaddress
    from lisp_controller.model import Endpoint
    from lisp_controller.store.sqlite import Store
    long_name = "vnet-" + "".join(chr(97 + i % 26) for i in range(295))
    store = Store(testbed.tmpdir / "store.db")  # where ControllerProcess keeps it
    store.write(put_endpoints=[(HV1, Endpoint(long_name, "52:54:00:00:00:ab", 1000,
                                              (ipaddress.ip_address("10.1.1.77"),)))])
    store.close()
    ov, ctl, api = start(testbed, tmp_path)
    assert long_name in [e["port"] for e in api("GET", "/v1/endpoints")[1]["endpoints"]]
    with Browser(testbed, ov.controller_ns.ns) as b:
        b.open()
        b.wait(lambda d: b.attr(card(HV1), "data-state") in ("up", "warning"), what="hv1's card")
        for size in (LAPTOP, PHONE):
            b.driver.set_window_size(*size)
            b.wait(lambda d: b.js("return window.innerWidth") <= size[0], what=f"{size[0]} px wide")
            got = b.js(FITS, b.one(card(HV1)), long_name)
            client, scroll = got["card"]
            # In the endpoints table and on the chip of a port missing from the bridge.
            assert {e["shown"] for e in got["named"]} == {"TD.mono ep-port", "SPAN.port missing"}, got
            for e in got["named"]:
                assert e["scroll"] <= client and 0 <= e["left"] and e["right"] <= client + 1, (size, e, client)
                assert e["cut"], e  # with an ellipsis, the title has the rest
            assert scroll <= client and not got["outside"] and got["page"], (size, got)
    assert "Traceback" not in ctl.log()
