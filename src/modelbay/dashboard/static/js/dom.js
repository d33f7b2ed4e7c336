// Small DOM helpers: build elements without innerHTML (every text from the server is text, never markup).

/** An element `tag` with `props` (attributes; `on*` functions become listeners; `class`, `text`,
 *  `hidden`, `disabled`, `value` set as properties) and `children` (nodes or strings; null skipped). */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      element.className = value;
    } else if (name === "text") {
      element.textContent = value;
    } else if (["hidden", "disabled", "value", "checked"].includes(name)) {
      element[name] = value;
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

/** Replace the children of `element` with `children`. */
export function fill(element, ...children) {
  element.replaceChildren();
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) element.append(child);
  }
  return element;
}

/** Copy `text` to the clipboard: the Clipboard API where the page may use it (https, localhost),
 *  else a hidden textarea and execCommand. Resolves to true when copied. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // fall through: permission refused
    }
  }
  const area = h("textarea", { class: "offscreen", readonly: true }, text);
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  return copied;
}

/** A <pre> with `text` and a Copy button. */
export function codeBlock(label, text) {
  const button = h("button", { type: "button", class: "copy", text: "Copy" });
  button.addEventListener("click", async () => {
    button.textContent = (await copyText(text)) ? "Copied" : "Select and copy";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  });
  return h("div", { class: "code" }, h("div", { class: "code-head" }, h("span", { text: label }), button), h("pre", { text }));
}
