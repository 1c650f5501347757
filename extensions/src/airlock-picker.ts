/**
 * "Request export" from the file browser: which request the selected files and folders go to —
 * one of my requests still open to changes, or a new one (its title asked here).
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { IAirlockSummary } from './airlock-api';
import { STATE_LABEL } from './airlock-format';
import { el } from './dom';

export const NEW = 'new';

/** The dialog's body: a choice of request, and a title for a new one. */
class PickerBody extends Widget {
  constructor(paths: string[], open: IAirlockSummary[]) {
    super({ node: el('div', 'vre-AirlockPicker') });
    const what = el('p', undefined, paths.length === 1 ? `Export ${paths[0]}` : `Export ${paths.length} items`);
    this.node.appendChild(what);
    const l = el('label', undefined, 'Export request');
    this._select = el('select');
    this._select.id = 'vre-airlock-pick';
    l.htmlFor = this._select.id;
    for (const r of open) {
      const o = el('option', undefined, `#${r.id} ${r.title || '(untitled)'} (${STATE_LABEL[r.state]})`);
      o.value = String(r.id);
      this._select.appendChild(o);
    }
    const o = el('option', undefined, 'a new request…');
    o.value = NEW;
    this._select.appendChild(o);
    this.node.appendChild(l);
    this.node.appendChild(this._select);
    const tl = el('label', undefined, 'Title of the new request');
    this._title = el('input');
    this._title.id = 'vre-airlock-pick-title';
    tl.htmlFor = this._title.id;
    this._title.value = `Export of ${paths[0].split('/').pop()}${paths.length > 1 ? ' and more' : ''}`;
    this._titleField = el('div', 'vre-AirlockField');
    this._titleField.appendChild(tl);
    this._titleField.appendChild(this._title);
    this.node.appendChild(this._titleField);
    const description = el('label', undefined, paths.length === 1 ? 'Its description' : 'A description for each');
    this._desc = el('input');
    this._desc.id = 'vre-airlock-pick-desc';
    this._desc.placeholder = 'What is it, how was it made?';
    description.htmlFor = this._desc.id;
    const df = el('div', 'vre-AirlockField');
    df.appendChild(description);
    df.appendChild(this._desc);
    this.node.appendChild(df);
    const sync = () => (this._titleField.hidden = this._select.value !== NEW);
    this._select.addEventListener('change', sync);
    sync();
  }

  getValue(): { target: string; title: string; description: string } {
    return { target: this._select.value, title: this._title.value.trim(), description: this._desc.value.trim() };
  }

  private _select: HTMLSelectElement;
  private _title: HTMLInputElement;
  private _titleField: HTMLDivElement;
  private _desc: HTMLInputElement;
}

/** Ask; null when cancelled. `target` is a request id or `NEW`. */
export async function pickRequest(
  paths: string[],
  open: IAirlockSummary[]
): Promise<{ target: string; title: string; description: string } | null> {
  const result = await showDialog({
    title: 'Request export',
    body: new PickerBody(paths, open),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Add to request' })],
    focusNodeSelector: 'select'
  });
  return result.button.accept ? result.value : null;
}
