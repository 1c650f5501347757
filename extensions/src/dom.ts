/**
 * DOM helpers shared by the panels and the viewer.
 */

/** A new element with an optional class list and text. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  cls?: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (cls) {
    node.className = cls;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

export interface IButtonOptions {
  /** Its whole class list (default `vre-btn`). */
  cls?: string;
  /** Name it by its title for assistive technology (`aria-label`), not by its label. */
  labelled?: boolean;
  /** Cancel the click's default action before `onClick`. */
  preventDefault?: boolean;
}

/** A `<button type="button">` with a tooltip (`title`) that calls `onClick` when clicked. */
export function button(
  label: string,
  title: string,
  onClick: () => void,
  options: IButtonOptions = {}
): HTMLButtonElement {
  const b = el('button', options.cls ?? 'vre-btn', label);
  b.type = 'button';
  b.title = title;
  if (options.labelled) {
    b.setAttribute('aria-label', title);
  }
  b.addEventListener('click', e => {
    if (options.preventDefault) {
      e.preventDefault();
    }
    onClick();
  });
  return b;
}

/** "1 image", "12 images" (with the locale's digit grouping). */
export function plural(n: number, word: string): string {
  return `${n.toLocaleString()} ${word}${n === 1 ? '' : 's'}`;
}
