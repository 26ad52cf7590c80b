(() => {
  const form = document.getElementById("filters");
  if (!form) return;
  for (const select of form.querySelectorAll("select")) {
    select.addEventListener("change", () => form.submit());
  }
  const search = form.querySelector("input[name=q]");
  const tiles = Array.from(document.querySelectorAll("li.tile"));
  const shown = document.getElementById("shown");
  const promptOf = (tile) => {
    if (tile.dataset.prompt !== undefined) return tile.dataset.prompt;  // cut on the tile: whole here
    const text = tile.querySelector(".prompt:not(.none)");
    return text === null ? "" : text.textContent;
  };
  search.addEventListener("input", () => {
    const needle = search.value.trim().toLowerCase();
    let count = 0;
    for (const tile of tiles) {
      const hit = !needle || promptOf(tile).toLowerCase().includes(needle);
      tile.hidden = !hit;
      if (hit) count += 1;
    }
    if (shown) {
      shown.textContent = needle ? `${count} of ${tiles.length} on this page match; Enter searches all` : "";
    }
  });
  for (const time of document.querySelectorAll("time[datetime]")) {
    const when = new Date(time.dateTime);
    if (!Number.isNaN(when.getTime())) {
      time.title = time.textContent;
      time.textContent = when.toLocaleString();
    }
  }

  // Copy a prompt: the Clipboard API where the page may use it (https, or loopback), else a selection.
  const box = document.getElementById("lightbox");
  const said = document.getElementById("said");
  const copyBySelection = (text) => {
    const area = document.createElement("textarea");
    area.value = text;
    area.readOnly = true;
    area.className = "offscreen";
    (box && box.open ? box : document.body).append(area);  // a modal dialog makes the rest inert
    area.select();
    let done = false;
    try {
      done = document.execCommand("copy");
    } catch (error) {
      done = false;
    }
    area.remove();
    return done;
  };
  const copyText = async (text) => {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (error) {
        // denied: try the selection
      }
    }
    return copyBySelection(text);
  };
  const labels = new WeakMap();
  const timers = new WeakMap();
  const copied = (button, done) => {
    if (!labels.has(button)) labels.set(button, button.textContent);
    button.textContent = done ? "Copied" : "Could not copy";
    if (said) said.textContent = done ? "Prompt copied" : "The prompt could not be copied";
    clearTimeout(timers.get(button));
    timers.set(button, setTimeout(() => { button.textContent = labels.get(button); }, 1500));
  };
  for (const tile of tiles) {
    const button = tile.querySelector("button.copy");
    if (button === null) continue;
    button.hidden = false;
    button.addEventListener("click", async () => copied(button, await copyText(promptOf(tile))));
  }

  // The lightbox: a picture full size on this page; arrows (keys, buttons, a swipe) move, Escape closes.
  if (!box || typeof box.showModal !== "function") return;  // then a picture's link opens its file
  const part = (id) => document.getElementById(id);
  const image = part("lb-image");
  const stage = part("lb-stage");
  const prev = part("lb-prev");
  const next = part("lb-next");
  const copy = part("lb-copy");
  const download = part("lb-download");
  const original = part("lb-open");
  const pictures = () => tiles.filter((tile) => tile.dataset.image && !tile.hidden);
  let current = null;
  const show = (tile) => {
    const list = pictures();
    const index = list.indexOf(tile);
    if (index < 0) return;
    current = tile;
    const link = tile.querySelector("a.thumb");
    const thumb = link.querySelector("img");
    const file = tile.querySelector("a.download");
    image.classList.add("loading");
    image.src = thumb.currentSrc || thumb.src;  // at once; the full picture takes its place once loaded
    image.alt = thumb.alt;
    const full = new Image();
    full.addEventListener("load", () => {
      if (current !== tile) return;
      image.src = full.src;
      image.classList.remove("loading");
    });
    full.src = link.href;
    const text = promptOf(tile);
    part("lb-prompt").textContent = text || "(no prompt)";
    part("lb-prompt").classList.toggle("none", !text);
    copy.hidden = !text;
    const facts = [tile.dataset.model];
    for (const fact of tile.querySelectorAll("dd.size, dd time")) facts.push(fact.textContent);
    part("lb-meta").textContent = facts.join(" · ");
    const source = tile.querySelector(".source");
    part("lb-source").replaceChildren(...(source === null ? [] : [source.cloneNode(true)]));
    download.href = file.href;
    download.setAttribute("download", file.getAttribute("download") || "");
    original.href = link.href;
    part("lb-count").textContent = `${index + 1} / ${list.length}`;
    prev.disabled = index === 0;
    next.disabled = index === list.length - 1;
    if (index + 1 < list.length) new Image().src = list[index + 1].querySelector("a.thumb").href;  // ready
    history.replaceState(null, "", `${location.pathname}${location.search}#image-${tile.dataset.image}`);
    if (!box.open) box.showModal();
  };
  const step = (delta) => {
    if (current === null) return;
    const list = pictures();
    const index = list.indexOf(current) + delta;
    if (index >= 0 && index < list.length) show(list[index]);
  };
  document.addEventListener("click", (event) => {
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
    const link = event.target instanceof Element ? event.target.closest("a.thumb, a.source-link[data-image]") : null;
    if (link === null) return;
    const tile = link.matches("a.thumb") ? link.closest("li.tile") : part(`image-${link.dataset.image}`);
    if (tile === null || !pictures().includes(tile)) return;  // not on this page: the link goes to it
    event.preventDefault();
    show(tile);
  });
  prev.addEventListener("click", () => step(-1));
  next.addEventListener("click", () => step(1));
  part("lb-close").addEventListener("click", () => box.close());
  copy.addEventListener("click", async () => {
    if (current !== null) copied(copy, await copyText(promptOf(current)));
  });
  document.addEventListener("keydown", (event) => {
    if (!box.open || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      event.preventDefault();
      step(event.key === "ArrowLeft" ? -1 : 1);
    }
  });
  box.addEventListener("click", (event) => {
    if (event.target === box || event.target === stage) box.close();  // the dark space around the picture
  });
  let touched = null;
  stage.addEventListener("touchstart", (event) => { touched = event.changedTouches[0].clientX; }, { passive: true });
  stage.addEventListener("touchend", (event) => {
    if (touched === null) return;
    const moved = event.changedTouches[0].clientX - touched;
    touched = null;
    if (Math.abs(moved) > 50) step(moved > 0 ? -1 : 1);
  });
  box.addEventListener("close", () => {
    const tile = current;
    current = null;
    image.removeAttribute("src");
    history.replaceState(null, "", `${location.pathname}${location.search}`);
    if (tile !== null) {
      const link = tile.querySelector("a.thumb");
      link.focus({ preventScroll: true });
      tile.scrollIntoView({ block: "nearest" });
    }
  });
  const wanted = /^#image-([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (wanted) {
    const tile = part(`image-${wanted[1]}`);
    if (tile !== null) show(tile);
  }
})();
