/**
 * The dataset browser (left sidebar): the session's datasets with their catalogue record,
 * and their series, filtered (modality, body part, free text) and paged by the server, shown
 * in a virtualised list (only the visible rows exist; pages of 100 are fetched on demand, so
 * 100,000 series scroll like 100). Drill-down: patients -> studies -> series.
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { IDataset, IPage, IPatientItem, ISeriesItem, IStudyItem } from './api';
import { el, plural } from './dom';
import { NotGrantedSection } from './catalogue';
import { apiUrl, errorText, getJSON } from './http';
import { Thumbnails } from './thumbnails';
import { VirtualList } from './virtual-list';

export interface IBrowserActions {
  open(dataset: IDataset, item: ISeriesItem): void;
  copyPath(dataset: IDataset, item: ISeriesItem): void;
  insertCode(dataset: IDataset, item: ISeriesItem): void;
  reveal(path: string): void;
}

type Level =
  | { kind: 'series' }
  | { kind: 'patients' }
  | { kind: 'studies'; patient: IPatientItem }
  | { kind: 'study-series'; patient: IPatientItem; study: IStudyItem };

export class DatasetBrowser extends Widget {
  constructor(private _actions: IBrowserActions) {
    super();
    this.addClass('vre-Browser');
    this.id = 'vre-datasets';
    this.title.caption = 'Datasets of this session';
    const n = this.node;

    const head = el('div', 'vre-Browser-head');
    head.appendChild(el('h2', 'vre-Browser-title', 'Datasets'));
    const reload = el('button', 'vre-btn vre-Browser-reload', '⟳');
    reload.title = 'Reload the datasets';
    reload.addEventListener('click', () => void this.refresh());
    head.appendChild(reload);
    n.appendChild(head);

    this._datasetSelect = el('select', 'vre-dataset-select vre-select');
    this._datasetSelect.addEventListener('change', () => this._selectDataset(this._datasetSelect.value));
    n.appendChild(this._datasetSelect);
    this._about = el('div', 'vre-About');
    n.appendChild(this._about);

    const filters = el('div', 'vre-Filters');
    this._search = el('input', 'vre-search vre-select');
    this._search.type = 'search';
    this._search.placeholder = 'Search description, patient, UID…';
    this._search.addEventListener('input', () => {
      clearTimeout(this._searchTimer);
      this._searchTimer = window.setTimeout(() => this._reloadList(), 250);
    });
    filters.appendChild(this._search);
    const row = el('div', 'vre-Filters-row');
    this._modality = el('select', 'vre-filter-modality vre-select');
    this._modality.title = 'Modality';
    this._modality.addEventListener('change', () => this._reloadList());
    this._bodyPart = el('select', 'vre-filter-bodypart vre-select');
    this._bodyPart.title = 'Body part';
    this._bodyPart.addEventListener('change', () => this._reloadList());
    row.append(this._modality, this._bodyPart);
    filters.appendChild(row);
    n.appendChild(filters);

    const tabs = el('div', 'vre-Tabs');
    this._tabSeries = el('button', 'vre-tab vre-tab-series', 'Series');
    this._tabPatients = el('button', 'vre-tab vre-tab-patients', 'By patient');
    this._tabSeries.addEventListener('click', () => this._setLevel({ kind: 'series' }));
    this._tabPatients.addEventListener('click', () => this._setLevel({ kind: 'patients' }));
    tabs.append(this._tabSeries, this._tabPatients);
    n.appendChild(tabs);
    this._crumbs = el('div', 'vre-Crumbs');
    n.appendChild(this._crumbs);
    this._count = el('div', 'vre-Count');
    n.appendChild(this._count);

    this._seriesList = new VirtualList<ISeriesItem>(72, (it, i) => this._seriesRow(it, i), (t, e) => this._total(t, e));
    this._patientList = new VirtualList<IPatientItem>(48, (it, i) => this._patientRow(it, i), (t, e) => this._total(t, e));
    this._studyList = new VirtualList<IStudyItem>(52, (it, i) => this._studyRow(it, i), (t, e) => this._total(t, e));
    const lists = el('div', 'vre-Lists');
    for (const l of [this._seriesList, this._patientList, this._studyList]) {
      l.node.hidden = true;
      lists.appendChild(l.node);
    }
    this._message = el('div', 'vre-Browser-message');
    this._message.hidden = true;
    lists.appendChild(this._message);
    n.appendChild(lists);

    // the other datasets: their catalogue records (never files); access is asked for on the hub
    n.appendChild(this._others.node);
  }

  get currentDataset(): IDataset | null {
    return this._dataset;
  }

  /** (Re)load the session's datasets. */
  async refresh(): Promise<void> {
    this._showMessage('Loading datasets…');
    try {
      const { datasets } = await getJSON<{ datasets: IDataset[] }>(apiUrl(['datasets']));
      this._datasets = datasets;
    } catch (e) {
      this._datasets = [];
      this._about.textContent = '';
      this._datasetSelect.hidden = true;
      this._showMessage(`Cannot list the datasets: ${errorText(e)}`, true);
      return;
    }
    const sel = this._datasetSelect;
    sel.textContent = '';
    for (const d of this._datasets) {
      const name = d.record?.title ? `${d.record.title} (${d.slug})` : d.slug;
      const o = el('option', '', d.mode === 'batch-only' ? `${name} · batch-only` : name);
      o.value = d.slug;
      sel.appendChild(o);
    }
    sel.hidden = this._datasets.length < 2;
    if (!this._datasets.length) {
      this._about.textContent = '';
      this._showMessage('This session has no datasets. Request access to one: see "Not granted" below.');
      this._others.node.open = true;
      return;
    }
    void this._others.load();
    const keep = this._dataset && this._datasets.find(d => d.slug === this._dataset!.slug);
    this._selectDataset(keep ? keep.slug : this._datasets[0].slug);
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (!this._started) {
      this._started = true;
      void this.refresh();
    }
  }

  protected onBeforeShow(msg: Message): void {
    super.onBeforeShow(msg);
    this._current()?.update();
  }

  private _current(): VirtualList<any> | null {
    switch (this._level.kind) {
      case 'series':
      case 'study-series':
        return this._seriesList;
      case 'patients':
        return this._patientList;
      case 'studies':
        return this._studyList;
    }
  }

  private _selectDataset(slug: string): void {
    const d = this._datasets.find(x => x.slug === slug) || null;
    this._dataset = d;
    this._datasetSelect.value = slug;
    this._renderAbout();
    const fill = (sel: HTMLSelectElement, values: string[] | undefined, all: string) => {
      const old = sel.value;
      sel.textContent = '';
      const o = el('option', '', all);
      o.value = '';
      sel.appendChild(o);
      for (const v of values || []) {
        const opt = el('option', '', v);
        opt.value = v;
        sel.appendChild(opt);
      }
      sel.value = (values || []).includes(old) ? old : '';
    };
    fill(this._modality, d?.record?.modalities, 'All modalities');
    fill(this._bodyPart, d?.record?.body_parts, 'All body parts');
    this._setLevel(this._level.kind === 'series' ? { kind: 'series' } : { kind: 'patients' });
  }

  private _renderAbout(): void {
    const a = this._about;
    a.textContent = '';
    const d = this._dataset;
    if (!d) {
      return;
    }
    const r = d.record || {};
    const card = el('div', 'vre-About-card');
    const title = el('div', 'vre-About-title', String(r.title || d.slug));
    if (r.interoperability_tier !== undefined && r.interoperability_tier !== null) {
      const tier = el('span', 'vre-badge', `Tier ${r.interoperability_tier}`);
      tier.title = 'EUCAIM interoperability tier';
      title.appendChild(tier);
    }
    card.appendChild(title);
    const counts = [
      r.num_subjects !== undefined ? plural(Number(r.num_subjects), 'subject') : '',
      r.num_studies !== undefined ? plural(Number(r.num_studies), 'study').replace('studys', 'studies') : '',
      r.num_series !== undefined ? `${Number(r.num_series).toLocaleString()} series` : ''
    ].filter(Boolean);
    card.appendChild(
      el('div', 'vre-About-summary', [r.condition, (r.modalities || []).join(', '), counts.join(' · ')].filter(Boolean).join(' · '))
    );
    if (d.mode === 'batch-only') {
      card.appendChild(el('div', 'vre-About-warn vre-About-batch', d.note || 'batch-only: available to batch jobs'));
    } else if (!d.indexed) {
      card.appendChild(el('div', 'vre-About-warn', 'This dataset is not indexed yet: series cannot be listed.'));
    }
    const details = el('details', 'vre-About-details');
    details.appendChild(el('summary', '', 'About this dataset'));
    const dl = el('dl', 'vre-About-fields');
    const add = (label: string, value: unknown) => {
      if (value === undefined || value === null || value === '' || (Array.isArray(value) && !value.length)) {
        return;
      }
      let text: string;
      if (Array.isArray(value)) {
        text = value.join(', ');
      } else if (typeof value === 'object') {
        const o = value as { [k: string]: unknown };
        text = o.name
          ? String(o.name)
          : Object.entries(o)
              .map(([k, v]) => `${k}: ${v}`)
              .join(', ');
      } else {
        text = String(value);
      }
      dl.append(el('dt', '', label), el('dd', `vre-field-${label.toLowerCase().replace(/\W+/g, '-')}`, text));
    };
    add('Description', r.description);
    add('Publisher', r.publisher);
    add('Terms of use', r.access_rights);
    add('Condition', r.condition);
    add('Modalities', r.modalities);
    add('Body parts', r.body_parts);
    add('Subjects', r.num_subjects);
    add('Studies', r.num_studies);
    add('Series', r.num_series);
    add('Images', r.num_instances);
    add('Tier', r.interoperability_tier);
    add('Keywords', r.keywords);
    add('License', r.license);
    add('Contact', r.contact_point);
    const range = r.study_date_range as string[] | undefined;
    if (range && range.length === 2) {
      add('Study dates', `${range[0]} – ${range[1]}`);
    }
    const ages = r.age_range as number[] | undefined;
    if (ages && ages.length === 2) {
      add('Ages', `${ages[0]}–${ages[1]} years`);
    }
    add('Sex', r.sex_distribution);
    add('Folder', d.path);
    details.appendChild(dl);
    if (d.browse_path) {
      const reveal = el('button', 'vre-btn vre-reveal', 'Show in file browser');
      reveal.addEventListener('click', () => this._actions.reveal(d.browse_path!));
      details.appendChild(reveal);
    }
    card.appendChild(details);
    a.appendChild(card);
  }

  private _setLevel(level: Level): void {
    this._level = level;
    const patientsMode = level.kind !== 'series';
    this._tabSeries.classList.toggle('vre-mod-on', !patientsMode);
    this._tabPatients.classList.toggle('vre-mod-on', patientsMode);
    this._renderCrumbs();
    this._reloadList();
  }

  private _renderCrumbs(): void {
    const c = this._crumbs;
    c.textContent = '';
    const level = this._level;
    c.hidden = level.kind === 'series';
    const crumb = (text: string, go: Level | null) => {
      const b = el(go ? 'button' : 'span', 'vre-crumb', text);
      if (go) {
        b.addEventListener('click', () => this._setLevel(go));
      }
      if (c.childNodes.length) {
        c.appendChild(el('span', 'vre-crumb-sep', '›'));
      }
      c.appendChild(b);
    };
    if (level.kind === 'patients') {
      crumb('All patients', null);
    } else if (level.kind === 'studies') {
      crumb('All patients', { kind: 'patients' });
      crumb(level.patient.patient_id, null);
    } else if (level.kind === 'study-series') {
      crumb('All patients', { kind: 'patients' });
      crumb(level.patient.patient_id, { kind: 'studies', patient: level.patient });
      crumb([level.study.study_date, level.study.study_description].filter(Boolean).join(' ') || 'study', null);
    }
  }

  private _filters(): { [k: string]: string } {
    return { q: this._search.value.trim(), modality: this._modality.value, body_part: this._bodyPart.value };
  }

  private _reloadList(): void {
    const d = this._dataset;
    for (const l of [this._seriesList, this._patientList, this._studyList]) {
      l.node.hidden = true;
    }
    if (!d) {
      return;
    }
    this._message.hidden = true;
    const f = this._filters();
    const level = this._level;
    const list = this._current()!;
    list.node.hidden = false;
    const base = ['datasets', d.slug];
    if (level.kind === 'series' || level.kind === 'study-series') {
      const study = level.kind === 'study-series' ? level.study.study_uid : undefined;
      this._seriesList.setSource((offset, limit) =>
        getJSON<IPage<ISeriesItem>>(apiUrl([...base, 'series'], { ...f, study, offset, limit }))
      );
    } else if (level.kind === 'patients') {
      this._patientList.setSource((offset, limit) =>
        getJSON<IPage<IPatientItem>>(apiUrl([...base, 'patients'], { ...f, offset, limit }))
      );
    } else {
      this._studyList.setSource((offset, limit) =>
        getJSON<IPage<IStudyItem>>(
          apiUrl([...base, 'studies'], { ...f, patient: level.patient.patient_id, offset, limit })
        )
      );
    }
  }

  private _total(total: number | null, error: string | null): void {
    if (error) {
      this._count.textContent = '';
      this._showMessage(error, true);
      return;
    }
    this._message.hidden = true;
    if (total === null) {
      this._count.textContent = 'Loading…';
      return;
    }
    const what = { series: 'series', 'study-series': 'series', patients: 'patient', studies: 'study' }[this._level.kind];
    this._count.textContent =
      what === 'series' ? `${total.toLocaleString()} series` : plural(total, what).replace('studys', 'studies');
    this._count.dataset.total = String(total);
    if (total === 0) {
      this._showMessage('Nothing matches these filters.');
    }
  }

  private _showMessage(text: string, error = false): void {
    this._message.hidden = false;
    this._message.textContent = text;
    this._message.classList.toggle('vre-mod-error', error);
    if (error) {
      const retry = el('button', 'vre-btn vre-retry', 'Retry');
      retry.addEventListener('click', () => (this._datasets.length ? this._reloadList() : void this.refresh()));
      this._message.appendChild(retry);
    }
  }

  private _seriesRow(item: ISeriesItem | null, index: number): HTMLElement {
    const row = el('div', 'vre-Row vre-SeriesRow');
    if (!item) {
      row.classList.add('vre-mod-placeholder');
      row.appendChild(el('div', 'vre-Row-loading', `Loading #${index + 1}…`));
      return row;
    }
    const d = this._dataset!;
    row.dataset.seriesUid = item.series_uid;
    row.dataset.modality = item.modality || '';
    row.title = `${item.description || ''}\nSeries UID ${item.series_uid}\nStudy UID ${item.study_uid}`;
    const thumb = el('div', 'vre-Thumb');
    const url = apiUrl(['datasets', d.slug, 'series', item.series_uid, 'thumbnail.png']);
    this._visibleThumbs.add(url);
    this._thumbs.get(url).then(
      src => {
        const img = el('img');
        img.src = src;
        img.alt = '';
        thumb.appendChild(img);
      },
      e => {
        thumb.classList.add('vre-mod-none');
        thumb.title = errorText(e);
      }
    );
    this._scheduleThumbPrune();
    row.appendChild(thumb);
    const text = el('div', 'vre-Row-text');
    text.appendChild(el('div', 'vre-Row-title', item.description || '(no description)'));
    text.appendChild(
      el('div', 'vre-Row-sub', [item.modality, item.body_part, plural(item.num_instances, 'image')].filter(Boolean).join(' · '))
    );
    text.appendChild(
      el('div', 'vre-Row-sub2', [item.patient_id, item.study_date, item.study_description].filter(Boolean).join(' · '))
    );
    row.appendChild(text);
    const actions = el('div', 'vre-Row-actions');
    const act = (label: string, title: string, cls: string, f: () => void) => {
      const b = el('button', `vre-btn vre-act ${cls}`, label);
      b.title = title;
      b.setAttribute('aria-label', title);
      b.addEventListener('click', e => {
        e.stopPropagation();
        f();
      });
      actions.appendChild(b);
    };
    act('Open', 'Open in viewer', 'vre-act-open', () => this._actions.open(d, item));
    act('Path', 'Copy path', 'vre-act-copy', () => this._actions.copyPath(d, item));
    act('Code', 'Insert code cell', 'vre-act-code', () => this._actions.insertCode(d, item));
    row.appendChild(actions);
    row.addEventListener('dblclick', () => this._actions.open(d, item));
    return row;
  }

  private _patientRow(item: IPatientItem | null, index: number): HTMLElement {
    const row = el('div', 'vre-Row vre-PatientRow');
    if (!item) {
      row.classList.add('vre-mod-placeholder');
      row.appendChild(el('div', 'vre-Row-loading', `Loading #${index + 1}…`));
      return row;
    }
    row.dataset.patientId = item.patient_id;
    const text = el('div', 'vre-Row-text');
    const who = [item.sex, item.age_years !== null && item.age_years !== undefined ? `${Math.floor(item.age_years)} y` : '']
      .filter(Boolean)
      .join(', ');
    text.appendChild(el('div', 'vre-Row-title', `${item.patient_id}${who ? '  (' + who + ')' : ''}`));
    text.appendChild(
      el(
        'div',
        'vre-Row-sub',
        [plural(item.num_studies, 'study').replace('studys', 'studies'), `${item.num_series} series`, item.modalities.join(', ')]
          .filter(Boolean)
          .join(' · ')
      )
    );
    row.appendChild(text);
    row.appendChild(el('div', 'vre-Row-go', '›'));
    row.addEventListener('click', () => this._setLevel({ kind: 'studies', patient: item }));
    return row;
  }

  private _studyRow(item: IStudyItem | null, index: number): HTMLElement {
    const row = el('div', 'vre-Row vre-StudyRow');
    if (!item) {
      row.classList.add('vre-mod-placeholder');
      row.appendChild(el('div', 'vre-Row-loading', `Loading #${index + 1}…`));
      return row;
    }
    row.dataset.studyUid = item.study_uid;
    const text = el('div', 'vre-Row-text');
    text.appendChild(el('div', 'vre-Row-title', [item.study_date, item.study_description].filter(Boolean).join('  ') || '(no description)'));
    text.appendChild(
      el(
        'div',
        'vre-Row-sub',
        [`${item.num_series} series`, plural(item.num_instances, 'image'), item.modalities.join(', '), item.accession]
          .filter(Boolean)
          .join(' · ')
      )
    );
    row.appendChild(text);
    row.appendChild(el('div', 'vre-Row-go', '›'));
    const level = this._level;
    row.addEventListener('click', () => {
      if (level.kind === 'studies') {
        this._setLevel({ kind: 'study-series', patient: level.patient, study: item });
      }
    });
    return row;
  }

  /** After a scroll settles, drop queued thumbnail requests of rows no longer shown. */
  private _scheduleThumbPrune(): void {
    clearTimeout(this._pruneTimer);
    this._pruneTimer = window.setTimeout(() => {
      const shown = new Set<string>();
      const d = this._dataset;
      if (d) {
        this.node.querySelectorAll<HTMLElement>('.vre-SeriesRow[data-series-uid]').forEach(r => {
          shown.add(apiUrl(['datasets', d.slug, 'series', r.dataset.seriesUid!, 'thumbnail.png']));
        });
      }
      this._thumbs.keepOnly(shown);
      this._visibleThumbs = shown;
    }, 300);
  }

  private _datasets: IDataset[] = [];
  private _dataset: IDataset | null = null;
  private _level: Level = { kind: 'series' };
  private _datasetSelect: HTMLSelectElement;
  private _about: HTMLDivElement;
  private _search: HTMLInputElement;
  private _searchTimer = 0;
  private _modality: HTMLSelectElement;
  private _bodyPart: HTMLSelectElement;
  private _tabSeries: HTMLButtonElement;
  private _tabPatients: HTMLButtonElement;
  private _crumbs: HTMLDivElement;
  private _count: HTMLDivElement;
  private _message: HTMLDivElement;
  private _seriesList: VirtualList<ISeriesItem>;
  private _patientList: VirtualList<IPatientItem>;
  private _studyList: VirtualList<IStudyItem>;
  private _thumbs = new Thumbnails();
  private _visibleThumbs = new Set<string>();
  private _pruneTimer = 0;
  private _started = false;
  private _others = new NotGrantedSection();
}
