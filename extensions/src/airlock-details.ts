/**
 * One export request in the panel: its text and files (descriptions editable while it is a draft or
 * returned), per-file problems from "Check", Submit, Withdraw, the reviewers' comments once the API
 * shows them (after the blinded phase), and, once released, download links to the VRE service with
 * the checksums. Which buttons show follows the API's `actions`; every answer re-renders the request.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';

import { airlockApi, downloadUrl, IAirlockFile, IAirlockRequest, ICheckReport, IWithheldFile, problemLines } from './airlock-api';
import { DECISION_LABEL, fileBadge, sizeOf, stateBadge, stateHint, timeText } from './airlock-format';
import { button, el } from './dom';
import { errorText } from './http';

export interface IDetailsOptions {
  /** The request changed (list it again); `message` for the panel's status line. */
  changed(req: IAirlockRequest, message?: string): void;
  close(): void;
}

export class AirlockDetails {
  readonly node: HTMLElement;

  constructor(private _options: IDetailsOptions) {
    this.node = el('section', 'vre-AirlockDetails');
    this.node.hidden = true;
    this.node.setAttribute('aria-label', 'Export request');
  }

  get request(): IAirlockRequest | null {
    return this._req;
  }

  /** Show `req` (null: hide). The last check's problems stay while the same request is shown. */
  show(req: IAirlockRequest | null): void {
    if (!req || req.id !== this._req?.id) {
      this._check = null;
      this._error = '';
    }
    this._req = req;
    this.node.hidden = !req;
    this._render();
  }

  /** Load request `rid` and show it. */
  async load(rid: number): Promise<void> {
    try {
      this.show(await airlockApi.get(rid));
    } catch (e) {
      this._req = null;
      this.node.hidden = false;
      this.node.textContent = '';
      this.node.appendChild(this._errorBox(`Cannot load request ${rid}: ${errorText(e)}`));
    }
  }

  /** Run `call` (an API call answering the request), show its answer or its error. */
  private async _do(call: () => Promise<IAirlockRequest>, message?: string): Promise<void> {
    this.node.setAttribute('aria-busy', 'true');
    try {
      const req = await call();
      this._error = '';
      this._check = null;
      this.show(req);
      this._options.changed(req, message);
    } catch (e) {
      this._error = [errorText(e), ...problemLines(e)].join('\n');
      this._render();
    } finally {
      this.node.removeAttribute('aria-busy');
    }
  }

  private _render(): void {
    const req = this._req;
    this.node.textContent = '';
    if (!req) {
      return;
    }
    const can = (a: string) => req.actions.includes(a);
    this.node.dataset.requestId = String(req.id);
    this.node.dataset.state = req.state;

    const head = el('div', 'vre-AirlockDetails-head');
    const title = el('h3', 'vre-AirlockDetails-title');
    title.appendChild(document.createTextNode(`#${req.id} `));
    title.appendChild(stateBadge(req.state));
    head.appendChild(title);
    head.appendChild(button('✕', `Close request ${req.id}`, () => this._options.close(), { labelled: true }));
    this.node.appendChild(head);
    const hint = el('p', 'vre-AirlockDetails-hint', stateHint(req));
    this.node.appendChild(hint);
    if (this._error) {
      this.node.appendChild(this._errorBox(this._error));
    }

    // title and justification: editable while a draft or returned
    const uid = `vre-airlock-${req.id}`;
    if (can('edit')) {
      const t = this._field(`${uid}-title`, 'Title', el('input'));
      t.value = req.title;
      const j = this._field(`${uid}-just`, 'Justification (why these results may leave)', el('textarea'));
      j.value = req.justification;
      j.rows = 2;
      const save = button('Save', `Save the title and justification of request ${req.id}`, () =>
        void this._do(() => airlockApi.edit(req.id, { title: t.value, justification: j.value }), 'Saved.')
      );
      this.node.appendChild(save);
    } else {
      this.node.appendChild(el('div', 'vre-AirlockDetails-name', req.title));
      if (req.justification) {
        this.node.appendChild(el('div', 'vre-AirlockDetails-just', req.justification));
      }
    }
    this.node.appendChild(
      el(
        'div',
        'vre-AirlockDetails-meta',
        [`${req.project}`, `${req.file_count} file${req.file_count === 1 ? '' : 's'}${req.withheld_files ? ` (${req.withheld_files} held, withheld until review)` : ''}`, sizeOf(req.total_size),
          req.submitted_at ? `submitted ${timeText(req.submitted_at)}` : `created ${timeText(req.created_at)}`]
          .filter(Boolean)
          .join(' · ')
      )
    );

    // files
    const files = el('ul', 'vre-AirlockFiles');
    files.setAttribute('aria-label', `Files of request ${req.id}`);
    const withheld = new Map<string, IWithheldFile[]>();
    for (const f of req.files) {
      if (f.withheld) {
        withheld.set(f.path, [...(withheld.get(f.path) || []), f]);
      } else {
        files.appendChild(this._fileRow(req, f));
      }
    }
    for (const [path, held] of withheld) {
      files.appendChild(this._withheldRow(req, path, held));
    }
    if (!req.files.length) {
      files.appendChild(el('li', 'vre-AirlockFiles-empty', 'No files yet: add one below, or right-click a file or folder in the file browser → “Request export”.'));
    }
    this.node.appendChild(files);

    if (can('add_files')) {
      const add = el('form', 'vre-AirlockAdd');
      add.setAttribute('aria-label', `Add files to request ${req.id}`);
      const p = this._field(`${uid}-add`, 'Add a file or folder (path as in the file browser)', el('input'), add);
      p.placeholder = 'project/results/table.csv';
      const d = this._field(`${uid}-add-desc`, 'Its description', el('input'), add);
      const submit = el('button', 'vre-btn', 'Add');
      submit.type = 'submit';
      submit.title = `Add the file or folder to request ${req.id}`;
      submit.setAttribute('aria-label', submit.title);
      add.appendChild(submit);
      add.addEventListener('submit', e => {
        e.preventDefault();
        if (p.value.trim()) {
          void this._do(() => airlockApi.addFiles(req.id, [{ path: p.value.trim(), description: d.value }]), 'Added.');
        }
      });
      this.node.appendChild(add);
    }

    // check results
    if (this._check) {
      const c = this._check;
      const box = el('div', c.ok ? 'vre-AirlockCheck vre-mod-ok' : 'vre-AirlockCheck vre-mod-problems');
      box.setAttribute('role', 'status');
      if (c.ok) {
        box.textContent = 'Check: no problems. Ready to submit.';
      } else {
        box.appendChild(el('div', 'vre-AirlockCheck-title', 'Check: fix these before submitting'));
        const ul = el('ul');
        for (const p of c.problems) {
          ul.appendChild(el('li', undefined, p));
        }
        for (const f of c.files) {
          for (const p of f.problems) {
            ul.appendChild(el('li', undefined, `${f.name}: ${p}`));
          }
        }
        box.appendChild(ul);
      }
      this.node.appendChild(box);
    }

    // actions
    const actions = el('div', 'vre-AirlockActions');
    if (can('check')) {
      actions.appendChild(
        button('Check', `Check request ${req.id} against the project's rules (nothing is copied)`, () => void this._runCheck(req.id), { labelled: true })
      );
    }
    if (can('submit')) {
      actions.appendChild(
        button(req.state === 'changes_requested' ? 'Resubmit' : 'Submit', `Submit request ${req.id} for review (the files are frozen)`, () =>
          void this._do(() => airlockApi.submit(req.id), `Request #${req.id} submitted: its files are frozen.`),
          { labelled: true }
        )
      );
    }
    if (can('withdraw')) {
      actions.appendChild(
        button('Withdraw', `Withdraw request ${req.id}`, async () => {
          const answer = await showDialog({
            title: `Withdraw request #${req.id}?`,
            body: 'A withdrawn request cannot be reopened; its frozen copies are never released.',
            buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Withdraw' })]
          });
          if (answer.button.accept) {
            void this._do(() => airlockApi.withdraw(req.id, ''), `Request #${req.id} withdrawn.`);
          }
        }, { labelled: true })
      );
    }
    if (can('download')) {
      const zip = el('a', 'vre-btn vre-AirlockDownload', 'Download all (zip)');
      zip.href = downloadUrl(req.id);
      zip.download = `airlock-${req.id}.zip`;
      zip.title = `Download the released files of request ${req.id} with SHA256SUMS and the signed release record`;
      actions.appendChild(zip);
    }
    if (actions.childElementCount) {
      this.node.appendChild(actions);
    }

    // the reviewers' comments (the API shows them once the blinded phase is over)
    if (req.reviews.length) {
      const names = new Map(req.files.map(f => [f.id, f.name]));
      const sec = el('div', 'vre-AirlockReviews');
      sec.appendChild(el('h4', undefined, "Reviewers' decisions"));
      const ul = el('ul');
      for (const r of req.reviews) {
        const li = el('li', r.current ? undefined : 'vre-mod-old');
        li.textContent = `${names.get(r.file) || `file ${r.file}`}: ${r.reviewer} ${DECISION_LABEL[r.decision] || r.decision}${
          r.comment ? ` — “${r.comment}”` : ''
        }${r.current ? '' : ' (earlier version)'}`;
        ul.appendChild(li);
      }
      sec.appendChild(ul);
      this.node.appendChild(sec);
    }
    const comments = req.history.filter(h => h.comment);
    if (comments.length) {
      const sec = el('div', 'vre-AirlockReviews vre-AirlockComments');
      sec.appendChild(el('h4', undefined, 'Comments'));
      const ul = el('ul');
      for (const h of comments) {
        ul.appendChild(el('li', undefined, `${h.actor} (${h.to.replace('_', ' ')}, ${timeText(h.time)}): “${h.comment}”`));
      }
      sec.appendChild(ul);
      this.node.appendChild(sec);
    }
  }

  private _fileRow(req: IAirlockRequest, f: IAirlockFile): HTMLLIElement {
    const can = (a: string) => req.actions.includes(a);
    const li = el('li', 'vre-AirlockFile');
    li.dataset.fileId = String(f.id);
    li.dataset.name = f.name;
    const top = el('div', 'vre-AirlockFile-top');
    if (req.state !== 'draft') {
      top.appendChild(fileBadge(f.status));
    }
    const name = el('span', 'vre-AirlockFile-name', f.name);
    name.title = f.path;
    top.appendChild(name);
    top.appendChild(el('span', 'vre-AirlockFile-size', sizeOf(f.size)));
    li.appendChild(top);
    if (can('edit')) {
      const input = el('input', 'vre-AirlockFile-desc');
      input.value = f.description;
      input.placeholder = 'What is it, how was it made?';
      input.setAttribute('aria-label', `Description of ${f.name}`);
      input.addEventListener('change', () => void this._do(() => airlockApi.describe(req.id, f.id, input.value)));
      li.appendChild(input);
    } else if (f.description) {
      li.appendChild(el('div', 'vre-AirlockFile-descText', f.description));
    }
    if (f.sha256 && (req.state === 'released' || f.frozen)) {
      const sum = el('div', 'vre-AirlockFile-sha', `SHA-256 ${f.sha256}`);
      sum.title = 'The checksum of the frozen copy (what is reviewed and released)';
      li.appendChild(sum);
    }
    const problems = this._check?.files.find(c => c.id === f.id)?.problems || [];
    for (const p of problems) {
      li.appendChild(el('div', 'vre-AirlockFile-problem', p));
    }
    const tools = el('div', 'vre-AirlockFile-tools');
    if (req.actions.includes('download') && f.status === 'approved') {
      const a = el('a', 'vre-btn', 'Download');
      a.href = downloadUrl(req.id, f.id);
      a.download = f.name.split('/').pop() || f.name;
      a.title = `Download ${f.name}`;
      a.setAttribute('aria-label', `Download ${f.name}`);
      tools.appendChild(a);
    }
    if (can('update_file') && f.frozen) {
      tools.appendChild(
        button('Update', `Freeze ${f.name} again from ${f.path} (its reviews start afresh)`, () =>
          void this._do(() => airlockApi.updateFile(req.id, f.id), `${f.name} updated.`), { labelled: true })
      );
    }
    if (can('remove_file')) {
      tools.appendChild(
        button('Remove', `Remove ${f.name} from request ${req.id}`, () =>
          void this._do(() => airlockApi.removeFile(req.id, f.id)), { labelled: true })
      );
    }
    if (tools.childElementCount) {
      li.appendChild(tools);
    }
    return li;
  }

  /** A held job's files the author may not see before release: one line per job folder. */
  private _withheldRow(req: IAirlockRequest, path: string, held: IWithheldFile[]): HTMLLIElement {
    const li = el('li', 'vre-AirlockFile vre-mod-withheld');
    const n = `${held.length} file${held.length === 1 ? '' : 's'}`;
    const top = el('div', 'vre-AirlockFile-top');
    const name = el('span', 'vre-AirlockFile-name', `${path} — held: ${n} (withheld until review)`);
    name.title = "A held job's files: their names, sizes and checksums are shown to the output checkers only, until they are released";
    top.appendChild(name);
    li.appendChild(top);
    if (req.actions.includes('remove_file')) {
      const tools = el('div', 'vre-AirlockFile-tools');
      tools.appendChild(
        button('Remove', `Remove the ${n} of ${path} from request ${req.id}`, () =>
          void this._do(async () => {
            let out = req;
            for (const f of held) {
              out = await airlockApi.removeFile(req.id, f.id);
            }
            return out;
          }), { labelled: true })
      );
      li.appendChild(tools);
    }
    return li;
  }

  private async _runCheck(rid: number): Promise<void> {
    try {
      this._check = await airlockApi.check(rid);
      this._error = '';
    } catch (e) {
      this._error = [errorText(e), ...problemLines(e)].join('\n');
    }
    this._render();
  }

  private _field<T extends HTMLInputElement | HTMLTextAreaElement>(id: string, label: string, input: T, parent: HTMLElement = this.node): T {
    const wrap = el('div', 'vre-AirlockField');
    const l = el('label', undefined, label);
    input.id = id;
    l.htmlFor = id;
    wrap.appendChild(l);
    wrap.appendChild(input);
    parent.appendChild(wrap);
    return input;
  }

  private _errorBox(text: string): HTMLDivElement {
    const box = el('div', 'vre-AirlockError', text);
    box.setAttribute('role', 'alert');
    return box;
  }

  private _req: IAirlockRequest | null = null;
  private _check: ICheckReport | null = null;
  private _error = '';
}
