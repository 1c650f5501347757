/**
 * The Jobs panel's submit form: a notebook or script of the workspace, its parameters or
 * arguments, resources and a name. What the hub refuses is shown in the form as it comes (its
 * message says what to fix).
 */
import { button, el } from './dom';
import { errorText } from './http';
import { IJob, ISubmission, jobsApi } from './jobs-api';
import { queuePath } from './jobs-format';

export class JobForm {
  /** The form (hidden until opened). */
  readonly node: HTMLFormElement;
  /** The panel's "Submit…" button that opens and closes it. */
  readonly toggleButton: HTMLButtonElement;

  /** `submitted` is called with the queued job (the form has closed). */
  constructor(private _submitted: (job: IJob) => void) {
    this.toggleButton = button('Submit…', 'Submit a notebook or script as a batch job', () => this.toggle(), {
      labelled: true
    });
    this.toggleButton.setAttribute('aria-expanded', 'false');
    this.toggleButton.classList.add('vre-Jobs-submitToggle');
    this.node = this._build();
  }

  /** Open the form, with `path` (relative to the Lab root) as its target. */
  show(path?: string): void {
    this.node.hidden = false;
    this.toggleButton.setAttribute('aria-expanded', 'true');
    this.toggleButton.classList.add('vre-mod-on');
    if (path !== undefined) {
      this._fields.target.value = path;
      this._fields.params.value = '';
      this._fields.name.value = '';
      this._fields.held.checked = false;
      this._syncKind();
    }
    this._formError.hidden = true;
    this._formError.textContent = '';
    this._fields.target.focus();
  }

  toggle(): void {
    if (this.node.hidden) {
      this.show();
    } else {
      this._close();
    }
  }

  private _build(): HTMLFormElement {
    const form = el('form', 'vre-JobForm');
    form.hidden = true;
    form.setAttribute('aria-label', 'Submit a batch job');
    form.noValidate = true;
    const uid = Math.random().toString(36).slice(2, 8);
    const field = (label: string, input: HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement, hint?: string) => {
      const wrap = el('div', 'vre-JobForm-field');
      input.id = `vre-jobform-${uid}-${input.name}`;
      const l = el('label', undefined, label);
      l.htmlFor = input.id;
      wrap.appendChild(l);
      wrap.appendChild(input);
      if (hint !== undefined) {
        const h = el('div', 'vre-JobForm-hint', hint);
        h.id = `${input.id}-hint`;
        input.setAttribute('aria-describedby', h.id);
        wrap.appendChild(h);
      }
      form.appendChild(wrap);
      return wrap;
    };
    const input = (name: string, type = 'text', placeholder = '') => {
      const i = el('input');
      i.name = name;
      i.type = type;
      i.placeholder = placeholder;
      i.autocomplete = 'off';
      i.spellcheck = false;
      return i;
    };

    const target = input('target', 'text', 'project/analysis.ipynb');
    field('Notebook or script', target, 'Path as in the file browser (the file must be in ~/project).');
    target.required = true;
    target.addEventListener('input', () => this._syncKind());

    const kind = el('select');
    kind.name = 'kind';
    for (const k of ['notebook', 'script']) {
      const o = el('option', undefined, k);
      o.value = k;
      kind.appendChild(o);
    }
    kind.addEventListener('change', () => this._syncParamsLabel());
    field('Kind', kind);

    const params = el('textarea');
    params.name = 'params';
    params.rows = 3;
    params.spellcheck = false;
    const paramsField = field('Parameters', params, '');
    this._paramsLabel = paramsField.querySelector('label')!;
    this._paramsHint = paramsField.querySelector('.vre-JobForm-hint')!;

    const grid = el('div', 'vre-JobForm-grid');
    const cpu = input('cpu', 'number', 'profile');
    cpu.min = '0.1';
    cpu.step = '0.1';
    const mem = input('mem_mb', 'number', 'profile');
    mem.min = '64';
    mem.step = '64';
    const gpus = input('gpus', 'number', 'profile');
    gpus.min = '0';
    gpus.step = '1';
    const runtime = input('max_runtime', 'number', 'default');
    runtime.min = '1';
    runtime.step = '1';
    for (const [label, i] of [
      ['CPUs', cpu],
      ['Memory (MiB)', mem],
      ['GPUs', gpus],
      ['Max run time (s)', runtime]
    ] as [string, HTMLInputElement][]) {
      const w = field(label, i);
      grid.appendChild(w);
    }
    form.appendChild(grid);

    const name = input('name', 'text', 'optional');
    name.maxLength = 128;
    field('Name', name);

    // a held job: the project's batch-only datasets too; its log and outputs stay on the hub
    const held = input('held', 'checkbox');
    field(
      'Held (batch-only data)',
      held,
      'Also reads the batch-only datasets; its log and outputs stay on the hub and leave only through an export request.'
    );

    this._formError = el('div', 'vre-Jobs-error vre-JobForm-error');
    this._formError.setAttribute('role', 'alert');
    this._formError.hidden = true;
    form.appendChild(this._formError);

    const actions = el('div', 'vre-JobForm-actions');
    this._formSubmit = el('button', 'vre-btn vre-mod-on vre-JobForm-submit', 'Submit job');
    this._formSubmit.type = 'submit';
    this._formSubmit.title = 'Queue this job';
    this._formSubmit.setAttribute('aria-label', 'Submit job');
    actions.appendChild(this._formSubmit);
    actions.appendChild(button('Close', 'Close the submit form', () => this._close(), { labelled: true }));
    form.appendChild(actions);

    form.addEventListener('submit', e => {
      e.preventDefault();
      void this._submit();
    });
    form.addEventListener('keydown', e => {
      if (e.key === 'Escape') {
        e.preventDefault();
        this._close();
      } else if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        void this._submit();
      }
    });
    this._fields = { target, kind, params, cpu, mem, gpus, runtime, name, held };
    this._syncParamsLabel();
    return form;
  }

  /** Hide the form; `focusToggle`: give the focus back to the Submit… button. */
  private _close(focusToggle = true): void {
    this.node.hidden = true;
    this.toggleButton.setAttribute('aria-expanded', 'false');
    this.toggleButton.classList.remove('vre-mod-on');
    if (focusToggle) {
      this.toggleButton.focus();
    }
  }

  private _syncKind(): void {
    const t = this._fields.target.value.trim().toLowerCase();
    if (t.endsWith('.ipynb')) {
      this._fields.kind.value = 'notebook';
    } else if (t.endsWith('.py')) {
      this._fields.kind.value = 'script';
    }
    this._syncParamsLabel();
  }

  private _syncParamsLabel(): void {
    const notebook = this._fields.kind.value === 'notebook';
    this._paramsLabel.textContent = notebook ? 'Parameters (JSON object)' : 'Arguments (one per line)';
    this._paramsHint.textContent = notebook
      ? 'Fill the notebook’s “parameters” cell, e.g. {"series": "1.2.3", "n": 5}. Empty: none.'
      : 'Command-line arguments of the script, one per line (or a JSON list). Empty: none.';
    this._fields.params.placeholder = notebook ? '{}' : '--epochs\n5';
  }

  /** The form as a submission, or a message saying what to fix. */
  private _readForm(): ISubmission | string {
    const f = this._fields;
    const target = f.target.value.trim();
    if (!target) {
      return 'Give the path of a notebook (.ipynb) or script (.py) in the workspace.';
    }
    const kind = f.kind.value as 'notebook' | 'script';
    const text = f.params.value.trim();
    let params: { [key: string]: unknown };
    if (kind === 'notebook') {
      if (!text) {
        params = {};
      } else {
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch (e) {
          return `The parameters are not valid JSON: ${errorText(e)}`;
        }
        if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
          return 'The parameters must be a JSON object of name: value, e.g. {"n": 5}.';
        }
        params = parsed as { [key: string]: unknown };
      }
    } else {
      let args: unknown[];
      if (text.startsWith('[')) {
        try {
          args = JSON.parse(text);
        } catch (e) {
          return `The arguments are not a valid JSON list: ${errorText(e)}`;
        }
        if (!Array.isArray(args)) {
          return 'The arguments must be a JSON list, or one argument per line.';
        }
      } else {
        args = text ? text.split('\n').map(s => s.trim()).filter(s => s.length) : [];
      }
      params = { args };
    }
    const body: ISubmission = { kind, target: queuePath(target), params };
    const numbers: [keyof ISubmission, HTMLInputElement, string][] = [
      ['cpu', f.cpu, 'CPUs'],
      ['mem_mb', f.mem, 'Memory'],
      ['gpus', f.gpus, 'GPUs'],
      ['max_runtime', f.runtime, 'Max run time']
    ];
    for (const [key, i, label] of numbers) {
      const v = i.value.trim();
      if (!v) {
        continue;
      }
      const n = Number(v);
      if (!Number.isFinite(n) || (key !== 'cpu' && !Number.isInteger(n))) {
        return `${label} must be a ${key === 'cpu' ? '' : 'whole '}number, not “${v}”.`;
      }
      (body as any)[key] = n;
    }
    const name = f.name.value.trim();
    if (name) {
      body.name = name;
    }
    if (f.held.checked) {
      body.lane = 'held';
    }
    return body;
  }

  private async _submit(): Promise<void> {
    if (this._submitting) {
      return;
    }
    const body = this._readForm();
    const err = this._formError;
    if (typeof body === 'string') {
      err.textContent = body;
      err.hidden = false;
      return;
    }
    this._submitting = true;
    this._formSubmit.disabled = true;
    this._formSubmit.textContent = 'Submitting…';
    err.hidden = true;
    err.textContent = '';
    try {
      const job = await jobsApi.submit(body);
      this._close(false);
      this._submitted(job);
    } catch (e) {
      err.textContent = errorText(e); // the hub's message says what to fix
      err.hidden = false;
    } finally {
      this._submitting = false;
      this._formSubmit.disabled = false;
      this._formSubmit.textContent = 'Submit job';
    }
  }

  private _formError!: HTMLDivElement;
  private _formSubmit!: HTMLButtonElement;
  private _paramsLabel!: HTMLLabelElement;
  private _paramsHint!: HTMLDivElement;
  private _submitting = false;
  private _fields!: {
    target: HTMLInputElement;
    kind: HTMLSelectElement;
    params: HTMLTextAreaElement;
    cpu: HTMLInputElement;
    mem: HTMLInputElement;
    gpus: HTMLInputElement;
    runtime: HTMLInputElement;
    name: HTMLInputElement;
    held: HTMLInputElement;
  };
}
